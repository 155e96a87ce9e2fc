//! Device kinds and the city's sites: the data that the gateway, the simulator and `nodectl`
//! share.
//!
//! - **Profiles** (`profiles/*.toml`, one per kind) say what a device measures (fields, units,
//!   valid ranges), how it reports (wire frames, third-party JSON, or Modbus registers), how often,
//!   and its default alert thresholds.
//! - **Sites** (`sites/*.toml`) describe a city: districts, devices, scenic areas with capacities
//!   and gates, road segments with detectors, pipe assets with sensors. `sites/ganzhou.toml` is
//!   the reference city (DOMAIN.md §7).
//!
//! Loading validates everything, and either returns the whole model or every problem found, each
//! naming the file, line, column and reason ([`Problem`]). Nothing is ever half-loaded.
//!
//! # Layout
//!
//! - [`profile`]: the profile schema and its checks; [`modbus`]: register maps.
//! - [`site`]: the site schema and its cross-reference checks.
//! - [`locate`]: resolves a problem's path (`scenic_area[2].capacity.daily`) to a line.
//! - [`source`]: reading a TOML file and turning errors into [`Problem`]s.
//! - [`Catalog::ganzhou`]: the reference data compiled into the binary, for `gateway demo`.

pub mod calendar;
pub mod demo;
pub mod file;
pub mod grid;
pub mod keys;
pub mod locate;
pub mod modbus;
pub mod profile;
pub mod site;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use file::{LoadError, Problem};
pub use profile::{Category, Encoding, Field, Profile};
pub use site::Site;

use file::TomlFile;

/// The profiles folder of this source tree.
pub const PROFILES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
/// The reference site file of this source tree.
pub const GANZHOU_SITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sites/ganzhou.toml");

/// Profiles by kind.
pub type Profiles = BTreeMap<String, Profile>;

/// Loaded and cross-checked profiles and site.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Every profile, by kind.
    pub profiles: Profiles,
    /// The site.
    pub site: Site,
}

impl Catalog {
    /// Loads every `*.toml` in `profiles_dir`, then the site file against them.
    pub fn load(profiles_dir: &Path, site: &Path) -> Result<Catalog, LoadError> {
        let profiles = load_profiles(profiles_dir)?;
        let site = load_site(site, &profiles)?;
        Ok(Catalog { profiles, site })
    }

    /// The Ganzhou reference data, compiled into the binary so that `gateway demo` and the
    /// simulator run from anywhere.
    pub fn ganzhou() -> Result<Catalog, LoadError> {
        let files = builtin::PROFILES
            .iter()
            .map(|(name, text)| {
                TomlFile::from_text(&Path::new("profiles").join(name), (*text).to_owned())
            })
            .collect();
        let profiles = profiles_from(files)?;
        let site = site_from(
            TomlFile::from_text(Path::new("sites/ganzhou.toml"), builtin::GANZHOU.to_owned()),
            &profiles,
        )?;
        Ok(Catalog { profiles, site })
    }
}

mod builtin {
    pub const PROFILES: &[(&str, &str)] = &[
        (
            "drainage-level.toml",
            include_str!("../profiles/drainage-level.toml"),
        ),
        (
            "manhole-json.toml",
            include_str!("../profiles/manhole-json.toml"),
        ),
        (
            "modbus-pipe-rtu.toml",
            include_str!("../profiles/modbus-pipe-rtu.toml"),
        ),
        (
            "people-counter.toml",
            include_str!("../profiles/people-counter.toml"),
        ),
        (
            "smart-manhole.toml",
            include_str!("../profiles/smart-manhole.toml"),
        ),
        (
            "traffic-geomagnetic.toml",
            include_str!("../profiles/traffic-geomagnetic.toml"),
        ),
        (
            "traffic-loop.toml",
            include_str!("../profiles/traffic-loop.toml"),
        ),
        (
            "tunnel-gas.toml",
            include_str!("../profiles/tunnel-gas.toml"),
        ),
        (
            "uhf-rfid-gate.toml",
            include_str!("../profiles/uhf-rfid-gate.toml"),
        ),
        (
            "water-pressure.toml",
            include_str!("../profiles/water-pressure.toml"),
        ),
    ];
    pub const GANZHOU: &str = include_str!("../sites/ganzhou.toml");
}

/// Loads and checks every `*.toml` file in `dir`.
pub fn load_profiles(dir: &Path) -> Result<Profiles, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    let files = paths
        .iter()
        .map(|p| TomlFile::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    profiles_from(files)
}

fn profiles_from(files: Vec<TomlFile>) -> Result<Profiles, LoadError> {
    let mut problems = Vec::new();
    let mut profiles = Profiles::new();
    if files.is_empty() {
        return Err(LoadError::Invalid(vec![Problem {
            file: PathBuf::from("profiles"),
            position: None,
            reason: "no profile files (*.toml) found".into(),
        }]));
    }
    for file in files {
        let profile: Profile = match file.parse() {
            Ok(p) => p,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let stem = file
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        problems.extend(
            profile
                .check(stem)
                .into_iter()
                .map(|(path, reason)| file.problem(&path, reason)),
        );
        if let Some(prev) = profiles.get(&profile.kind) {
            problems.push(file.problem(
                "kind",
                format!(
                    "kind \"{}\" is already defined (\"{}\")",
                    prev.kind, prev.name
                ),
            ));
        } else {
            profiles.insert(profile.kind.clone(), profile);
        }
    }
    if problems.is_empty() {
        Ok(profiles)
    } else {
        Err(LoadError::Invalid(sorted(problems)))
    }
}

/// Loads a site file and checks it against `profiles`.
pub fn load_site(path: &Path, profiles: &Profiles) -> Result<Site, LoadError> {
    site_from(TomlFile::read(path)?, profiles)
}

fn site_from(file: TomlFile, profiles: &Profiles) -> Result<Site, LoadError> {
    let site: Site = file.parse().map_err(|p| LoadError::Invalid(vec![p]))?;
    let problems: Vec<Problem> = site
        .check(profiles)
        .into_iter()
        .map(|(path, reason)| file.problem(&path, reason))
        .collect();
    if problems.is_empty() {
        Ok(site)
    } else {
        Err(LoadError::Invalid(sorted(problems)))
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    problems
}
