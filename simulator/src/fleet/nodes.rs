//! The virtual nodes: one per wire device of the site, each running the real node logic
//! (`node::Node`) behind simulated sensors read through the real drivers: the QMC5883L
//! magnetometers of a traffic detector's lanes, the ADS1115 of a pipe sensor's transducers.

use std::collections::VecDeque;

use device_profiles::site::GateDirection;
use node::drivers::ads1115::{Input, Transducers};
use node::drivers::qmc5883l::{Qmc5883l, Range, Rate};
use node::lifecycle::Node;
use node::pipe::{Calibration, Watch, WatchState};
use node::rfid::Gate;
use node::traffic::{Change, Detector, LaneCounter, Tuning};
use wire::Quantity;

use crate::hardware::{Field, Inputs, SimAdc, SimMagnetometer};

pub(super) use node::lifecycle::poll_once as ready;

/// Frames a node keeps while its link is down.
pub(super) const QUEUE: usize = 256;
/// Magnetometer samples per simulated second (the detector needs ≥ 3 per vehicle).
const MAG_HZ: u64 = 25;
/// Earth's field at the sensors, LSB at 2 G.
const EARTH: [i16; 3] = [1200, -300, 4100];
/// A car's footprint over a sensor, metres.
const CAR_M: f64 = 4.5;

/// A detected lane: two sensors a known distance apart.
#[derive(Debug)]
pub(super) struct Lane {
    pub(super) number: u8,
    pub(super) sensors: [(Qmc5883l<SimMagnetometer>, Detector, Field); 2],
    pub(super) counter: LaneCounter,
    /// Vehicles: (time over sensor A, ms; speed, m/s).
    pub(super) cars: VecDeque<(i64, f64)>,
}

/// A lane of two sensors at rest over the earth's field.
pub(super) fn lane(number: u8) -> anyhow::Result<Lane> {
    let sensor = || {
        let field = Field::default();
        field.set(EARTH);
        let chip = SimMagnetometer::new(field.clone());
        let driver = Qmc5883l::new(chip, Rate::Hz200, Range::Gauss2)
            .map_err(|_| anyhow::anyhow!("simulated magnetometer"))?;
        Ok::<_, anyhow::Error>((driver, Detector::new(Tuning::default()), field))
    };
    Ok(Lane {
        number,
        sensors: [sensor()?, sensor()?],
        counter: LaneCounter::default(),
        cars: VecDeque::new(),
    })
}

/// What a node senses.
#[derive(Debug)]
pub(super) enum Sensing {
    /// An RFID gate reader.
    Gate {
        area: String,
        direction: GateDirection,
        gate: Box<Gate>,
    },
    /// A people counter at a gate.
    Counter {
        area: String,
        direction: GateDirection,
        entries: u32,
        exits: u32,
    },
    /// A traffic detector.
    Traffic {
        segment: String,
        lanes: Vec<Lane>,
        spacing_m: f64,
    },
    /// A pipe, well or cover sensor.
    Pipe {
        asset: String,
        fields: Vec<Quantity>,
        adc: Option<(Transducers<SimAdc>, Inputs)>,
        watches: Vec<(Watch, WatchState)>,
    },
}

/// One virtual node.
#[derive(Debug)]
pub struct VirtualNode {
    /// Device id.
    pub id: String,
    /// The `up` topic.
    pub topic: String,
    pub(super) node: Node<QUEUE>,
    pub(super) sensing: Sensing,
    pub(super) report_every_ms: i64,
    pub(super) next_report_ms: i64,
    pub(super) next_status_ms: i64,
    /// Frames published lately (for the replay fault).
    pub(super) recent: VecDeque<Vec<u8>>,
}

/// Where frames go: `publish` returns `false` while the node's link is down.
pub trait Out {
    /// Publishes one frame.
    fn publish(&mut self, topic: &str, frame: Vec<u8>) -> bool;
}

pub(super) struct Uplinked<'a, O: Out> {
    pub(super) out: &'a mut O,
    pub(super) down: bool,
    pub(super) recent: &'a mut VecDeque<Vec<u8>>,
}

impl<O: Out> node::Uplink for Uplinked<'_, O> {
    type Error = ();
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ()> {
        if self.down || !self.out.publish(topic, payload.to_vec()) {
            return Err(());
        }
        if self.recent.len() == 16 {
            self.recent.pop_front();
        }
        self.recent.push_back(payload.to_vec());
        Ok(())
    }
}

/// Reads a pressure through the ADS1115 and the node's calibration (0–1 MPa over 4–20 mA).
pub(super) fn adc_read(adc: &mut Transducers<SimAdc>, inputs: &Inputs, mpa: f32) -> Option<f32> {
    // The transducer drives 4–20 mA into 150 Ω.
    inputs.set(0, (4.0 + 16.0 * mpa.clamp(0.0, 1.0)) * 0.150);
    let cal = Calibration::four_to_twenty_ma(0.0, 1.0);
    for _ in 0..3 {
        match adc.read(Input::A0) {
            Ok(raw) => return Some(cal.apply(raw)),
            Err(nb::Error::WouldBlock) => {}
            Err(nb::Error::Other(_)) => return None,
        }
    }
    None
}

/// Senses one second of a lane at `MAG_HZ` through the real driver and detector.
pub(super) fn sense_lane(lane: &mut Lane, t: i64, spacing_m: f64, uptime_end: u64) {
    let step = 1000 / MAG_HZ as i64;
    let mut ts = t - 1000 + step;
    while ts <= t {
        let uptime = uptime_end.saturating_sub((t - ts) as u64);
        for (s, offset_m) in [(0usize, 0.0), (1, spacing_m)] {
            let over = lane.cars.iter().any(|&(at, v)| {
                let pos = (ts - at) as f64 / 1000.0 * v - offset_m;
                (0.0..CAR_M).contains(&pos)
            });
            let (driver, detector, field) = &mut lane.sensors[s];
            field.set(if over {
                [EARTH[0] + 250, EARTH[1] + 90, EARTH[2] - 400]
            } else {
                EARTH
            });
            if let Ok(Some(sample)) = driver.read()
                && let Some(change) = detector.sample(sample, uptime)
            {
                if s == 0 {
                    lane.counter.first_sensor(change, uptime);
                } else if spacing_m > 0.0 && change == Change::Arrived {
                    lane.counter
                        .second_sensor(change, uptime, (spacing_m * 1000.0) as u32);
                }
            }
        }
        ts += step;
    }
    // Cars past both sensors are gone.
    while lane
        .cars
        .front()
        .is_some_and(|&(at, v)| (t - at) as f64 / 1000.0 * v > CAR_M + spacing_m + 1.0)
    {
        lane.cars.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_car_over_both_sensors_is_counted_once_with_its_speed() {
        let mut l = lane(1).unwrap();
        let spacing_m = 3.0;
        // A car at 10 m/s reaches sensor A at t = 500 ms; the detector settles first.
        let mut uptime = 0u64;
        for t in (1_000..=20_000).step_by(1000) {
            uptime += 1000;
            if t == 20_000 {
                l.cars.push_back((19_500, 10.0));
            }
            sense_lane(&mut l, t, spacing_m, uptime);
        }
        for t in (21_000..=23_000).step_by(1000) {
            uptime += 1000;
            sense_lane(&mut l, t, spacing_m, uptime);
        }
        let counts = l.counter.close(1, 23_000, uptime);
        assert_eq!(counts.vehicles, 1, "{counts:?}");
        let kmh = f64::from(counts.mean_speed_dkmh.unwrap()) / 10.0;
        assert!((30.0..=42.0).contains(&kmh), "36 km/h measured as {kmh}");
        assert!(l.cars.is_empty(), "the car has left both sensors");
    }

    #[test]
    fn a_pressure_reads_back_through_the_adc_and_the_calibration() {
        let inputs = Inputs::default();
        let mut adc = Transducers::new(SimAdc::new(inputs.clone())).unwrap();
        for mpa in [0.0f32, 0.3, 0.95] {
            let got = adc_read(&mut adc, &inputs, mpa).unwrap();
            assert!((got - mpa).abs() < 0.002, "{mpa} read as {got}");
        }
    }
}
