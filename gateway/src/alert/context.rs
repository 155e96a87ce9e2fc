//! What the engine knows about the site: which asset a device sits on, the scaled capacities,
//! opening hours in local time.

use device_profiles::Catalog;
// Keys are rule indices, subjects and fields of the site (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub(super) struct DeviceCtx {
    /// The pipe asset it sits on: the subject of its reading rules.
    pub(super) asset: Option<Arc<str>>,
    /// The scenic area of the gate it reads.
    pub(super) gate_area: Option<Arc<str>>,
}

/// What the engine knows about the site.
#[derive(Debug, Clone, Default)]
pub(super) struct Context {
    pub(super) devices: HashMap<Arc<str>, DeviceCtx>,
    /// Subject → (name, zone).
    pub(super) subjects: HashMap<Arc<str>, (String, Arc<str>)>,
    pub(super) access_roads: HashMap<Arc<str>, Vec<Arc<str>>>,
    pub(super) neighbours: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Opening and closing, ms after local midnight.
    pub(super) hours: HashMap<Arc<str>, (i64, i64)>,
    pub(super) utc_offset_ms: i64,
}

impl Context {
    /// The name of `subject` from the site file and its district, or its id and `zone` for a
    /// subject the site does not name.
    pub(super) fn name_and_zone(&self, subject: &str, zone: &Arc<str>) -> (String, Arc<str>) {
        self.subjects
            .get(subject)
            .map(|(n, z)| (n.clone(), z.clone()))
            .unwrap_or_else(|| (subject.to_owned(), zone.clone()))
    }

    pub(super) fn new(catalog: &Catalog) -> Context {
        let site = &catalog.site;
        let mut c = Context {
            utc_offset_ms: site.site.utc_offset.ms(),
            ..Context::default()
        };
        for d in &site.devices {
            c.devices.insert(d.id.as_str().into(), DeviceCtx::default());
            c.subjects
                .insert(d.id.as_str().into(), (d.id.clone(), d.zone.as_str().into()));
        }
        for a in &site.scenic_areas {
            c.subjects.insert(
                a.id.as_str().into(),
                (a.name.clone(), a.zone.as_str().into()),
            );
            for p in &a.choke_points {
                c.subjects.insert(
                    p.id.as_str().into(),
                    (format!("{} {}", a.name, p.name), a.zone.as_str().into()),
                );
            }
            c.access_roads.insert(
                a.id.as_str().into(),
                a.access_roads.iter().map(|r| r.as_str().into()).collect(),
            );
            if let Some((open, close)) = a.hours.minutes() {
                c.hours.insert(
                    a.id.as_str().into(),
                    (i64::from(open) * 60_000, i64::from(close) * 60_000),
                );
            }
        }
        for g in &site.gates {
            if let Some(d) = c.devices.get_mut(g.device.as_str()) {
                d.gate_area = Some(g.area.as_str().into());
            }
        }
        for r in &site.road_segments {
            c.subjects.insert(
                r.id.as_str().into(),
                (r.name.clone(), r.zone.as_str().into()),
            );
        }
        for p in &site.pipe_assets {
            c.subjects.insert(
                p.id.as_str().into(),
                (p.name.clone(), p.zone.as_str().into()),
            );
            c.neighbours.insert(
                p.id.as_str().into(),
                p.neighbours.iter().map(|n| n.as_str().into()).collect(),
            );
            for d in &p.devices {
                if let Some(dev) = c.devices.get_mut(d.as_str()) {
                    dev.asset = Some(p.id.as_str().into());
                }
            }
        }
        c
    }

    #[inline]
    pub(super) fn is_open(&self, area: &str, now_ms: i64) -> bool {
        let Some(&(open, close)) = self.hours.get(area) else {
            return true;
        };
        let t = (now_ms + self.utc_offset_ms).rem_euclid(86_400_000);
        t >= open && t < close
    }
}
