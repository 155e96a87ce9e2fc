//! Congestion grades and the traffic performance index (DOMAIN.md §2.1, §2.2, §6.2).

use device_profiles::site::RoadClass;

/// 畅通 free flow … 严重拥堵 severe congestion, as 1..=5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    /// 畅通.
    Free = 1,
    /// 基本畅通.
    Basic = 2,
    /// 轻度拥堵.
    Light = 3,
    /// 中度拥堵.
    Moderate = 4,
    /// 严重拥堵.
    Severe = 5,
}

/// The grade of an average travel speed on a road of `class`. Each band is lower-exclusive
/// (a < v ≤ b), as in the source table.
pub fn grade_by_speed(class: RoadClass, speed_kmh: f64) -> Grade {
    // Upper bounds of 严重, 中度, 轻度, 基本畅通.
    let [severe, moderate, light, basic] = match class {
        RoadClass::Expressway => [20.0, 35.0, 50.0, 65.0],
        RoadClass::Arterial => [15.0, 20.0, 30.0, 40.0],
        RoadClass::Secondary | RoadClass::Branch => [10.0, 15.0, 25.0, 35.0],
    };
    if speed_kmh <= severe {
        Grade::Severe
    } else if speed_kmh <= moderate {
        Grade::Moderate
    } else if speed_kmh <= light {
        Grade::Light
    } else if speed_kmh <= basic {
        Grade::Basic
    } else {
        Grade::Free
    }
}

/// The grade when no speed is measured, from occupancy (DOMAIN.md §6.2, [U/P]: >25% at least
/// 中度, >40% 严重; below that the occupancy says too little to tell 畅通 from 轻度, so 基本畅通).
pub fn grade_by_occupancy(occupancy_pct: f64) -> Grade {
    if occupancy_pct > 40.0 {
        Grade::Severe
    } else if occupancy_pct > 25.0 {
        Grade::Moderate
    } else {
        Grade::Basic
    }
}

/// Traffic performance index 0–10 from the travel-time ratio r = v_free / v − 1, linear in the
/// bands 0–0.2 → 0–2, 0.2–0.5 → 2–4, 0.5–0.8 → 4–6, 0.8–1.1 → 6–8, above 1.1 → 8–10 (capped).
pub fn tpi(free_flow_kmh: f64, speed_kmh: f64) -> f64 {
    if speed_kmh <= 0.0 {
        return 10.0;
    }
    let r = (free_flow_kmh / speed_kmh - 1.0).max(0.0);
    let bands = [
        (0.0, 0.2, 0.0),
        (0.2, 0.5, 2.0),
        (0.5, 0.8, 4.0),
        (0.8, 1.1, 6.0),
        (1.1, 1.4, 8.0),
    ];
    for (lo, hi, base) in bands {
        if r <= hi {
            return base + 2.0 * (r - lo) / (hi - lo);
        }
    }
    10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_edges_belong_to_the_lower_band() {
        assert_eq!(grade_by_speed(RoadClass::Arterial, 40.0), Grade::Basic);
        assert_eq!(grade_by_speed(RoadClass::Arterial, 40.1), Grade::Free);
        assert_eq!(grade_by_speed(RoadClass::Arterial, 15.0), Grade::Severe);
        assert_eq!(grade_by_speed(RoadClass::Expressway, 35.0), Grade::Moderate);
        assert_eq!(grade_by_speed(RoadClass::Secondary, 10.5), Grade::Moderate);
    }

    #[test]
    fn tpi_follows_the_bands() {
        assert_eq!(tpi(50.0, 50.0), 0.0);
        assert!((tpi(60.0, 50.0) - 2.0).abs() < 1e-9); // r = 0.2
        assert!((tpi(75.0, 50.0) - 4.0).abs() < 1e-9); // r = 0.5
        assert_eq!(tpi(50.0, 5.0), 10.0);
        assert_eq!(tpi(50.0, 0.0), 10.0);
    }
}
