//! The reference data loads, and every broken file in `tests/cases/bad` gives exactly the
//! message in its `expected.txt`.
//!
//! A case folder holds `site.toml` (checked against the real profiles unless the case has its
//! own), or `profiles/` alone (checked without a site). Set `BLESS=1` to write `expected.txt`
//! from the current output, then read every changed line before committing it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::path::{Path, PathBuf};

use device_profiles::{Catalog, GANZHOU_SITE, LoadError, PROFILES_DIR, load_profiles, load_site};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases")
        .join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn load_case(dir: &Path) -> Result<(), LoadError> {
    let own_profiles = dir.join("profiles");
    let site = dir.join("site.toml");
    let profiles = if own_profiles.is_dir() {
        load_profiles(&own_profiles)?
    } else {
        load_profiles(Path::new(PROFILES_DIR))?
    };
    if site.exists() {
        load_site(&site, &profiles)?;
    }
    Ok(())
}

#[test]
fn the_reference_data_loads() {
    let c = Catalog::load(Path::new(PROFILES_DIR), Path::new(GANZHOU_SITE)).unwrap();
    assert_eq!(c.site.site.region, "360700");
    assert!(c.profiles.len() >= 9);
}

#[test]
fn the_builtin_copy_is_the_files_on_disk() {
    let builtin = Catalog::ganzhou().unwrap();
    let disk = Catalog::load(Path::new(PROFILES_DIR), Path::new(GANZHOU_SITE)).unwrap();
    let kinds = |c: &Catalog| c.profiles.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        kinds(&builtin),
        kinds(&disk),
        "add new profile files to builtin::PROFILES"
    );
    assert_eq!(builtin.site.devices.len(), disk.site.devices.len());
}

#[test]
fn good_cases_load() {
    for dir in cases("good") {
        load_case(&dir).unwrap_or_else(|e| panic!("{}:\n{e}", dir.display()));
    }
}

#[test]
fn each_bad_case_gives_exactly_its_expected_message() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for dir in cases("bad") {
        let err = match load_case(&dir) {
            Ok(()) => {
                failures.push(format!("{}: loaded without error", dir.display()));
                continue;
            }
            Err(e) => e,
        };
        assert!(
            matches!(err, LoadError::Invalid(_)),
            "{}: {err}",
            dir.display()
        );
        let prefix = format!("{}/", dir.display());
        let got = format!("{err}\n").replace(&prefix, "");
        let expected_path = dir.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n  expected: {expected}  got:      {got}",
                dir.display()
            ));
        }
        assert_eq!(
            err.problems().len(),
            1,
            "{}: one clear message, not several:\n{got}",
            dir.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_missing_site_file_names_the_path() {
    let profiles = load_profiles(Path::new(PROFILES_DIR)).unwrap();
    let err = load_site(Path::new("/nonexistent/site.toml"), &profiles).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/site.toml: cannot read:"),
        "{err}"
    );
}

#[test]
fn ganzhou_places_everything_on_its_map_inside_the_prefecture() {
    let site = Catalog::ganzhou().unwrap().site;
    // 赣州市 spans roughly 24.5–27.2 °N and 113.9–116.6 °E.
    let inside = |p: &device_profiles::site::LatLon| {
        (24.4..27.2).contains(&p.0) && (113.9..116.7).contains(&p.1)
    };
    for a in &site.scenic_areas {
        assert!(a.location.as_ref().is_some_and(inside), "{}", a.id);
    }
    for r in &site.road_segments {
        assert!(
            r.ends.as_ref().is_some_and(|e| e.iter().all(inside)),
            "{}",
            r.id
        );
    }
    for a in &site.pipe_assets {
        assert!(a.location.as_ref().is_some_and(inside), "{}", a.id);
    }
}

#[test]
fn a_subject_with_devices_on_both_sides_of_the_served_districts_is_named() {
    let mut site = Catalog::ganzhou().unwrap().site;
    let zhanggong = vec!["360702".to_owned()];
    assert!(
        site.straddling(&zhanggong).is_empty(),
        "Ganzhou's districts hold whole subjects"
    );
    assert!(
        site.straddling(&[]).is_empty(),
        "serving everything splits nothing"
    );
    // One of 浮桥's gates is moved across the river into 赣县区 (360704 in this site file).
    let gate = site
        .gates
        .iter()
        .find(|g| g.area == "S3")
        .unwrap()
        .device
        .clone();
    site.devices.iter_mut().find(|d| d.id == gate).unwrap().zone = "360704".into();
    assert_eq!(
        site.straddling(&zhanggong),
        [
            "scenic area \"S3\" straddles the served districts: it has devices in 360702 (served) and 360704 (not served); serve all of them in one gateway, or move the subject"
        ]
    );
    let both = vec!["360702".to_owned(), "360704".to_owned()];
    assert!(site.straddling(&both).is_empty());
    // A gateway of 赣县区 alone sees the gate, and is told too.
    assert_eq!(site.straddling(&["360704".to_owned()]).len(), 1);
}
