//! The default rules of a site (DOMAIN.md §6): crowd grades on every scenic area and choke
//! point, congestion and incidents on every road segment, the `[[alert]]` thresholds of every
//! profile, bursts, low batteries and offline devices.

use crate::alert::episode::Side;
use device_profiles::Catalog;
use std::collections::BTreeMap;

use super::*;

/// Site-wide tunables of the default rules.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultsTuning {
    /// Policy cap on scenic-area capacity (DOMAIN.md §6.1: 1.0, or 0.3/0.5/0.75 by order).
    pub cap_factor: f64,
    /// The cap of single scenic areas or choke points, by id, instead of `cap_factor`.
    pub cap_factor_by_area: BTreeMap<String, f64>,
}

impl Default for DefaultsTuning {
    fn default() -> Self {
        DefaultsTuning {
            cap_factor: 1.0,
            cap_factor_by_area: BTreeMap::new(),
        }
    }
}

pub(super) fn grade(name: &str, label: &str, at: f64) -> Grade {
    Grade {
        name: name.to_owned(),
        label: Some(label.to_owned()),
        at,
        advice: String::new(),
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A rule with everything optional left out.
pub(super) fn base(
    id: &str,
    category: Category,
    source: Source,
    field: &str,
    description: &str,
) -> Rule {
    Rule {
        id: id.to_owned(),
        category,
        description: description.to_owned(),
        standard: String::new(),
        advice: String::new(),
        source,
        measurement: None,
        field: field.to_owned(),
        tags: BTreeMap::new(),
        kinds: Vec::new(),
        subjects: Vec::new(),
        side: Side::Above,
        grades: Vec::new(),
        clear_margin: 0.0,
        hold_s: 0,
        clear_hold_s: 0,
        renotify_s: None,
        stale_s: None,
        require: Vec::new(),
        derive: None,
        confirm: None,
        upstream: None,
        scale: BTreeMap::new(),
    }
}

/// The default rules for a site (DOMAIN.md §6).
pub fn defaults(catalog: &Catalog, tuning: &DefaultsTuning) -> Vec<Rule> {
    let cap = tuning.cap_factor;
    // Per-area caps replace the site-wide one: the thresholds are already scaled by `cap`.
    let by_area: BTreeMap<String, f64> = tuning
        .cap_factor_by_area
        .iter()
        .map(|(area, f)| (area.clone(), f / cap))
        .collect();
    let lbt = |scale: f64| {
        vec![
            grade("blue", "蓝", 0.6 * scale),
            grade("yellow", "黄", 0.8 * scale),
            grade("orange", "橙", 0.9 * scale),
            grade("red", "红", 1.0 * scale),
        ]
    };
    // A crowd rule on areas (choke_point "") or choke points ("*"): clear 5 points lower for
    // 10 minutes (DOMAIN.md §6.1).
    let crowd =
        |id: &str, choke_point: &str, field: &str, grades: Vec<Grade>, description: &str| Rule {
            measurement: Some("crowd".into()),
            tags: tags(&[("choke_point", choke_point)]),
            grades,
            scale: by_area.clone(),
            clear_margin: 0.05,
            clear_hold_s: 600,
            ..base(id, Category::Crowd, Source::Point, field, description)
        };
    let mut rules = vec![
        crowd(
            "crowd.occupancy",
            "",
            "occupancy_ratio",
            lbt(cap),
            "visitors in the area against its instantaneous capacity (LB/T 034-2014)",
        ),
        crowd(
            "crowd.choke_point",
            "*",
            "occupancy_ratio",
            lbt(cap),
            "people on a choke point (bridge, stairs) against its own capacity",
        ),
        crowd(
            "crowd.daily",
            "",
            "daily_ratio",
            lbt(cap),
            "entries today against the daily capacity",
        ),
        crowd(
            "crowd.forecast",
            "",
            "forecast_ratio",
            vec![grade("yellow", "黄 (预警)", 0.8 * cap)],
            "occupancy plus 30 minutes of the net inflow reaches 80% of capacity",
        ),
        Rule {
            measurement: Some("crowd".into()),
            grades: vec![grade("warning", "计数漂移", 1.0)],
            clear_hold_s: 900,
            ..base(
                "crowd.count_drift",
                Category::Crowd,
                Source::Point,
                "drift",
                "gate counts disagree: occupancy below zero or above 1.5 x capacity",
            )
        },
        Rule {
            kinds: catalog
                .profiles
                .values()
                .filter(|p| p.category == device_profiles::Category::Crowd)
                .map(|p| p.kind.clone())
                .collect(),
            grades: vec![grade("warning", "闸机无数据", 300.0)],
            ..base(
                "crowd.sensor_stale",
                Category::Crowd,
                Source::Presence,
                "silence_s",
                "a gate has been silent for 5 minutes during opening hours",
            )
        },
        Rule {
            measurement: Some("traffic".into()),
            tags: tags(&[("bin", "5m"), ("lane", "")]),
            grades: vec![
                grade("warning", "中度拥堵", 4.0),
                grade("alarm", "严重拥堵", 5.0),
            ],
            clear_margin: 0.5,
            hold_s: 300,
            clear_hold_s: 300,
            ..base(
                "traffic.congestion",
                Category::Traffic,
                Source::Point,
                "grade",
                "congestion grade by road class held for two 5-minute bins",
            )
        },
        Rule {
            measurement: Some("traffic".into()),
            tags: tags(&[("bin", "1m"), ("lane", "")]),
            side: Side::Below,
            grades: vec![grade("alarm", "疑似事故", 0.5)],
            clear_margin: 0.1,
            clear_hold_s: 300,
            require: vec![Require {
                field: "occupancy_pct".into(),
                above: Some(30.0),
                below: None,
            }],
            ..base(
                "traffic.incident",
                Category::Traffic,
                Source::Point,
                "speed_ratio",
                "speed fell below half its 15-minute baseline while occupancy is above 30%",
            )
        },
        Rule {
            upstream: Some("crowd.occupancy".into()),
            grades: vec![grade("attention", "景区客流影响", 2.0)],
            ..base(
                "traffic.crowd_coupling",
                Category::Traffic,
                Source::Coupling,
                "",
                "a scenic area at 黄 or worse: watch its access roads, parking and diversion",
            )
        },
        Rule {
            kinds: kinds_with_field(catalog, "pressure"),
            derive: Some(Derive {
                kind: DeriveKind::Drop,
                window_s: 120,
            }),
            confirm: Some(Confirm::NeighbourOrFlow),
            grades: vec![grade("critical", "爆管", 0.10)],
            clear_margin: 0.02,
            clear_hold_s: 600,
            ..base(
                "pipe.burst",
                Category::Pipe,
                Source::Reading,
                "pressure",
                "pressure dropped 0.1 MPa within 2 minutes, confirmed by a neighbour or a flow spike",
            )
        },
        Rule {
            kinds: kinds_with_field(catalog, "road_water"),
            derive: Some(Derive {
                kind: DeriveKind::Rise,
                window_s: 600,
            }),
            grades: vec![grade("warning", "积水上涨", 5.0)],
            clear_margin: 1.0,
            clear_hold_s: 600,
            ..base(
                "pipe.road_water_rise",
                Category::Pipe,
                Source::Reading,
                "road_water",
                "water on the road rose 5 cm within 10 minutes",
            )
        },
        Rule {
            grades: vec![grade("alarm", "数据未送达", 1.0)],
            ..base(
                "gateway.sink_refused",
                Category::Gateway,
                Source::Sink,
                "refused",
                "a sink's server refuses the gateway (credentials, org or bucket): points are kept in the local store until it is fixed",
            )
        },
        Rule {
            grades: vec![grade("warning", "离线", 1.0)],
            ..base(
                "device.offline",
                Category::Device,
                Source::Presence,
                "offline",
                "no report for offline_after_intervals report periods, or the node said offline",
            )
        },
    ];
    for profile in catalog.profiles.values() {
        if let Some(pct) = profile.low_battery_pct {
            add_or_merge(
                &mut rules,
                Rule {
                    kinds: vec![profile.kind.clone()],
                    side: Side::Below,
                    grades: vec![grade("maintenance", "电量低", f64::from(pct))],
                    clear_margin: 5.0,
                    ..base(
                        "device.low_battery",
                        Category::Device,
                        Source::Reading,
                        "battery_pct",
                        "battery below the profile's low_battery_pct",
                    )
                },
            );
        }
        for a in &profile.alerts {
            let side = match a.side {
                device_profiles::profile::Side::Above => Side::Above,
                device_profiles::profile::Side::Below => Side::Below,
            };
            let mut grades = Vec::new();
            if let Some(w) = a.warn {
                grades.push(grade("warning", "预警", w));
            }
            grades.push(grade("alarm", "报警", a.alarm));
            if let Some(c) = a.critical {
                grades.push(grade("critical", "严重", c));
            }
            let category = match profile.category {
                device_profiles::Category::Crowd => Category::Crowd,
                device_profiles::Category::Traffic => Category::Traffic,
                device_profiles::Category::Pipe => Category::Pipe,
            };
            let id = format!(
                "{}.{}_{}",
                category.name(),
                a.field,
                if side == Side::Above { "high" } else { "low" }
            );
            let unit = profile
                .fields
                .iter()
                .find(|f| f.name == a.field)
                .map_or(String::new(), |f| format!(" ({})", f.unit));
            let description = format!(
                "{}{unit} {} the thresholds of the device profile",
                a.field.replace('_', " "),
                if side == Side::Above {
                    "above"
                } else {
                    "below"
                }
            );
            add_or_merge(
                &mut rules,
                Rule {
                    kinds: vec![profile.kind.clone()],
                    side,
                    grades,
                    clear_margin: a.clear_margin,
                    hold_s: a.hold_s,
                    clear_hold_s: a.hold_s,
                    standard: a.standard.clone().unwrap_or_default(),
                    advice: a.advice.clone().unwrap_or_default(),
                    ..base(&id, category, Source::Reading, &a.field, &description)
                },
            );
        }
    }
    for rule in &mut rules {
        guide(rule);
    }
    rules
}

/// The standard behind a default rule and what operators should do at each grade (DOMAIN.md
/// §6: LB/T 034-2014 actions by crowd grade, GB/T 33171-2016 congestion grades).
fn guide(rule: &mut Rule) {
    let crowd = [
        ("blue", "错峰提示；预置疏导人员"),
        ("yellow", "交通调控与入口调控；通知交警和文旅"),
        ("orange", "分流游客；停止现场售票"),
        (
            "red",
            "停止入园，出一进一；报告当地政府（旅游法第四十五条）",
        ),
    ];
    let (standard, advice, by_grade): (&str, &str, &[(&str, &str)]) = match rule.id.as_str() {
        "crowd.occupancy" | "crowd.choke_point" | "crowd.daily" => (
            "LB/T 034-2014 景区最大承载量核定导则；旅游法第四十五条",
            "",
            &crowd,
        ),
        "crowd.forecast" => (
            "LB/T 034-2014（预测预警）",
            "提前启动黄色响应：入口调控，通知交警和文旅",
            &[],
        ),
        "crowd.count_drift" => ("", "核对闸机计数，在控制台录入人工清点的在园人数", &[]),
        "crowd.sensor_stale" => ("", "检查闸机供电与网络；必要时人工计数", &[]),
        "traffic.congestion" => (
            "GB/T 33171-2016 城市交通运行状况评价规范",
            "",
            &[
                ("warning", "发布绕行提示；调整信号配时"),
                ("alarm", "交警到场疏导；启动分流方案"),
            ],
        ),
        "traffic.incident" => ("", "调取视频核实；派交警到场", &[]),
        "traffic.crowd_coupling" => ("LB/T 034-2014", "关注景区周边道路、停车场与分流", &[]),
        _ => return,
    };
    if rule.standard.is_empty() {
        rule.standard = standard.to_owned();
    }
    if rule.advice.is_empty() {
        rule.advice = advice.to_owned();
    }
    for g in &mut rule.grades {
        if let Some((_, a)) = by_grade.iter().find(|(name, _)| *name == g.name) {
            g.advice = (*a).to_owned();
        }
    }
}

fn kinds_with_field(catalog: &Catalog, field: &str) -> Vec<String> {
    catalog
        .profiles
        .values()
        .filter(|p| p.fields.iter().any(|f| f.name == field))
        .map(|p| p.kind.clone())
        .collect()
}

/// Adds `rule`, or its kinds to an existing rule with the same id and thresholds; a rule with
/// the same id and other thresholds gets the kind appended to its id.
fn add_or_merge(rules: &mut Vec<Rule>, mut rule: Rule) {
    // What a rule does, without the kinds it watches and the words for operators.
    let behaviour = |r: &Rule| Rule {
        kinds: Vec::new(),
        description: String::new(),
        standard: String::new(),
        advice: String::new(),
        grades: r
            .grades
            .iter()
            .map(|g| Grade {
                advice: String::new(),
                ..g.clone()
            })
            .collect(),
        ..r.clone()
    };
    if let Some(same) = rules.iter_mut().find(|r| r.id == rule.id) {
        if behaviour(same) == behaviour(&rule) {
            same.kinds.append(&mut rule.kinds);
            // The first profile's words stand; the others fill what it left empty.
            for (mine, theirs) in [
                (&mut same.standard, rule.standard),
                (&mut same.advice, rule.advice),
            ] {
                if mine.is_empty() {
                    *mine = theirs;
                }
            }
            return;
        }
        rule.id = format!("{}@{}", rule.id, rule.kinds.join("+"));
    }
    rules.push(rule);
}
