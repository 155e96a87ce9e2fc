//! Who answers an alert (网格化管理): the grid of its subject, the grid's unit, and from the
//! grid's roster the person on duty when it was raised or escalated, their supervisor and the
//! unit's head (`device_profiles::grid`).

use std::sync::Arc;

use device_profiles::Catalog;
use device_profiles::grid::{Grid, Person};
// Keys are subjects of the site (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

/// An alert's grid and the people it goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Grid id.
    pub grid: String,
    /// Its name.
    pub grid_name: String,
    /// The responsible unit.
    pub unit: String,
    /// On duty at the time (none: the roster has a gap, and the head is called).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_duty: Option<Person>,
    /// The on-duty person's supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<Person>,
    /// The unit's head.
    pub head: Person,
}

/// The site's grids, by subject.
#[derive(Debug, Clone, Default)]
pub(super) struct Grids {
    grids: Vec<Grid>,
    by_subject: HashMap<Arc<str>, usize>,
    utc_offset_ms: i64,
}

impl Grids {
    pub(super) fn new(catalog: &Catalog) -> Grids {
        let site = &catalog.site;
        let mut by_subject = HashMap::default();
        for (i, g) in site.grids.iter().enumerate() {
            for s in &g.subjects {
                by_subject.insert(Arc::from(s.as_str()), i);
            }
        }
        // A choke point is in its area's grid unless a grid lists it.
        for a in &site.scenic_areas {
            if let Some(&i) = by_subject.get(a.id.as_str()) {
                for c in &a.choke_points {
                    by_subject.entry(Arc::from(c.id.as_str())).or_insert(i);
                }
            }
        }
        Grids {
            grids: site.grids.clone(),
            by_subject,
            utc_offset_ms: site.site.utc_offset.ms(),
        }
    }

    /// The route of an alert on `subject` at `time_ms`, if a grid holds the subject.
    pub(super) fn route(&self, subject: &str, time_ms: i64) -> Option<Route> {
        let g = &self.grids[*self.by_subject.get(subject)?];
        let local = time_ms + self.utc_offset_ms;
        let date = device_profiles::calendar::local_date(time_ms, self.utc_offset_ms);
        let minute = (local.rem_euclid(86_400_000) / 60_000) as u32;
        let duty = g.on_duty(&date, minute);
        Some(Route {
            grid: g.id.clone(),
            grid_name: g.name.clone(),
            unit: g.unit.clone(),
            on_duty: duty.map(|d| Person {
                name: d.name.clone(),
                phone: d.phone.clone(),
            }),
            supervisor: duty.map(|d| d.supervisor.clone()),
            head: g.head.clone(),
        })
    }
}
