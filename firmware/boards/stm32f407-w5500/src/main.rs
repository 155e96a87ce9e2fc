//! A CitySense pipe node on an STM32F407 with a W5500 Ethernet chip.
//!
//! Wiring (the common STM32F407 "black board" plus a W5500 module and an ADS1115):
//!
//! | what | pins |
//! |---|---|
//! | W5500 SPI | SPI1: PA5 SCK, PA7 MOSI, PA6 MISO, PA4 CS; PB0 INT; PB1 RESET |
//! | ADS1115 (pressure transducer on AIN0, 4–20 mA over 150 Ω) | I2C1: PB6 SCL, PB7 SDA |
//!
//! Flash: the application from 0x0800_0000; the node's persisted record (boot epoch, key in
//! use, report interval) in sector 10 at 0x080C_0000; the config block written by
//! `nodectl flash` in sector 11 at 0x080E_0000.
//!
//! The main loop samples every 10 s, reports every `report_interval_s` and at once when the
//! pressure crosses 0.14 MPa, keeps frames in the offline queue while the broker is away,
//! answers downlinks, and feeds the independent watchdog only while it makes progress.

#![no_std]
#![no_main]

use defmt::{error, info, warn};
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, StackResources};
use embassy_net_wiznet::chip::W5500;
use embassy_net_wiznet::{Device, Runner, State};
use embassy_stm32::exti::{self, ExtiInput};
use embassy_stm32::flash::Flash;
use embassy_stm32::gpio::{Level, Output, Pull, Speed};
use embassy_stm32::i2c::{self, I2c};
use embassy_stm32::mode::{Async, Blocking};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::spi::{self, Spi};
use embassy_stm32::time::Hertz;
use embassy_stm32::wdg::IndependentWatchdog;
use embassy_stm32::{bind_interrupts, dma, interrupt, peripherals};
use embassy_time::{Delay, Duration, Instant, Timer};
use embedded_hal_bus::spi::ExclusiveDevice;
use minimq::{Buffers, ConfigBuilder, Session};
use node::config::{BLOCK_LEN, Config, Stream};
use node::drivers::ads1115::{Input, Transducers};
use node::lifecycle::{Node, Persisted, Storage, StorageFailed};
use node::mqtt::MqttUplink;
use node::pipe::{Calibration, Schedule, Watch, WatchState};
use static_cell::StaticCell;
use wire::{Quantity, Trigger};
use {defmt_rtt as _, panic_probe as _};

bind_interrupts!(struct Irqs {
    RNG => rng::InterruptHandler<peripherals::RNG>;
    EXTI0 => exti::InterruptHandler<interrupt::typelevel::EXTI0>;
    DMA2_STREAM3 => dma::InterruptHandler<peripherals::DMA2_CH3>;
    DMA2_STREAM0 => dma::InterruptHandler<peripherals::DMA2_CH0>;
});

/// Offset of the persisted record (sector 10) from the start of flash.
const RECORD_OFFSET: u32 = 0x000C_0000;
/// Offset of the config block (sector 11).
const CONFIG_OFFSET: u32 = 0x000E_0000;
/// Size of sector 10.
const RECORD_SECTOR: u32 = 128 * 1024;
/// Frames kept while the broker is away.
const QUEUE: usize = 24;

type EthernetSpi = ExclusiveDevice<Spi<'static, Async, spi::mode::Master>, Output<'static>, Delay>;

#[embassy_executor::task]
async fn ethernet_task(
    runner: Runner<'static, W5500, EthernetSpi, ExtiInput<'static, Async>, Output<'static>>,
) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device<'static>>) -> ! {
    runner.run().await
}

/// The persisted record in flash sector 10: length, postcard body, CRC-32.
struct FlashRecord {
    flash: Flash<'static, embassy_stm32::flash::Blocking>,
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl Storage for FlashRecord {
    fn load(&mut self) -> Option<Persisted> {
        let mut buf = [0u8; 96];
        self.flash.blocking_read(RECORD_OFFSET, &mut buf).ok()?;
        let n = usize::from(buf[0]);
        if n == 0 || n + 5 > buf.len() {
            return None;
        }
        let crc = u32::from_le_bytes([buf[1 + n], buf[2 + n], buf[3 + n], buf[4 + n]]);
        if CRC.checksum(&buf[..1 + n]) != crc {
            return None;
        }
        postcard::from_bytes(&buf[1..1 + n]).ok()
    }

    fn save(&mut self, record: &Persisted) -> Result<(), StorageFailed> {
        let mut buf = [0xFFu8; 96];
        let n = postcard::to_slice(record, &mut buf[1..88])
            .map_err(|_| StorageFailed)?
            .len();
        buf[0] = n as u8;
        let crc = CRC.checksum(&buf[..1 + n]);
        buf[1 + n..5 + n].copy_from_slice(&crc.to_le_bytes());
        self.flash
            .blocking_erase(RECORD_OFFSET, RECORD_OFFSET + RECORD_SECTOR)
            .map_err(|_| StorageFailed)?;
        self.flash
            .blocking_write(RECORD_OFFSET, &buf)
            .map_err(|_| StorageFailed)
    }
}

fn broker_address(host: &str) -> Option<Ipv4Address> {
    let mut parts = [0u8; 4];
    let mut it = host.split('.');
    for p in &mut parts {
        *p = it.next()?.parse().ok()?;
    }
    it.next()
        .is_none()
        .then(|| Ipv4Address::new(parts[0], parts[1], parts[2], parts[3]))
}

/// The pressure now, MPa (blocking conversion, ~8 ms).
async fn pressure(
    adc: &mut Transducers<I2c<'static, Blocking, i2c::Master>>,
    cal: &Calibration,
) -> Option<f32> {
    for _ in 0..10 {
        match adc.read(Input::A0) {
            Ok(raw) if cal.loop_fault(raw) => {
                warn!("pressure loop fault: raw {}", raw);
                return None;
            }
            Ok(raw) => return Some(cal.apply(raw)),
            Err(nb::Error::WouldBlock) => Timer::after_millis(4).await,
            Err(nb::Error::Other(_)) => return None,
        }
    }
    None
}

fn uptime_ms() -> u64 {
    Instant::now().as_millis()
}

#[embassy_executor::main]
async fn main(spawner: Spawner) -> ! {
    let p = embassy_stm32::init(embassy_stm32::Config::default());
    let mut flash = Flash::new_blocking(p.FLASH);
    let mut block = [0u8; BLOCK_LEN];
    let config = match flash
        .blocking_read(CONFIG_OFFSET, &mut block)
        .ok()
        .and_then(|()| {
            Config::decode(&block)
                .map_err(|e| error!("config block: {}", e.reason()))
                .ok()
        }) {
        Some(c) => c,
        None => loop {
            // Not provisioned: nothing to do until `nodectl flash` writes the block.
            error!(
                "no valid config block at 0x080E0000: run `nodectl provision` and `nodectl flash`"
            );
            Timer::after_secs(10).await;
        },
    };
    let mut storage = FlashRecord { flash };
    let mut node = Node::<QUEUE>::boot(config.clone(), &mut storage);
    info!(
        "{} boot epoch {}",
        config.device_id.as_str(),
        node.boot_epoch()
    );

    let mut watchdog = IndependentWatchdog::new(p.IWDG, 30_000_000);
    watchdog.unleash();

    let mut rng = Rng::new(p.RNG, Irqs);
    let mut seed = [0u8; 8];
    let _ = rng.async_fill_bytes(&mut seed).await;

    let mut spi_cfg = spi::Config::default();
    spi_cfg.frequency = Hertz(20_000_000);
    let spi = Spi::new(
        p.SPI1, p.PA5, p.PA7, p.PA6, p.DMA2_CH3, p.DMA2_CH0, Irqs, spi_cfg,
    );
    let cs = Output::new(p.PA4, Level::High, Speed::VeryHigh);
    let Ok(spi) = ExclusiveDevice::new(spi, cs, Delay);
    let int = ExtiInput::new(p.PB0, p.EXTI0, Pull::Up, Irqs);
    let reset = Output::new(p.PB1, Level::High, Speed::VeryHigh);
    // A locally administered MAC from the device key, so each node has its own.
    let k = config.key;
    let mac = [0x02, k[0], k[1], k[2], k[3], k[4]];
    static STATE: StaticCell<State<4, 4>> = StaticCell::new();
    let Ok((device, runner)) =
        embassy_net_wiznet::new(mac, STATE.init(State::new()), spi, int, reset).await
    else {
        defmt::panic!("W5500 not answering");
    };
    spawner.spawn(ethernet_task(runner).unwrap());
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        u64::from_le_bytes(seed),
    );
    spawner.spawn(net_task(net_runner).unwrap());

    let i2c = I2c::new_blocking(p.I2C1, p.PB6, p.PB7, i2c::Config::default());
    let mut adc = match Transducers::new(i2c) {
        Ok(a) => a,
        Err(_) => defmt::panic!("ADS1115 not answering on I2C1"),
    };
    let calibration = Calibration::four_to_twenty_ma(0.0, 1.0);
    let low_pressure = Watch {
        quantity: Quantity::Pressure,
        high: None,
        low: Some(0.14),
        margin: 0.02,
        hold_ms: 0,
    };
    let mut watch_state = WatchState::default();
    let mut schedule = Schedule::new(
        10_000,
        u64::from(node.report_interval_s()) * 1000,
        uptime_ms(),
    );
    let mut status = Schedule::new(
        10_000,
        u64::from(config.status_interval_s) * 1000,
        uptime_ms(),
    );

    static RX: StaticCell<[u8; 1024]> = StaticCell::new();
    static TX: StaticCell<[u8; 2048]> = StaticCell::new();
    let Ok(builder) = ConfigBuilder::new(Buffers::new(RX.init([0; 1024]), TX.init([0; 2048])))
        .client_id(&config.device_id)
        .and_then(|b| b.auth(&config.device_id, config.broker_password.as_bytes()))
    else {
        defmt::panic!("MQTT client id or credentials too long");
    };
    let mut session = Session::new(builder.keepalive_interval(60).session_expiry_interval(3600));
    let Some(broker) = broker_address(&config.broker_host) else {
        defmt::panic!("broker_host must be an IPv4 address");
    };
    let (down_topic, status_topic) = (config.topic(Stream::Down), config.topic(Stream::Status));
    let mut rx_buf = [0u8; 1024];
    let mut tx_buf = [0u8; 1024];

    stack.wait_config_up().await;
    info!("network up");
    loop {
        watchdog.pet();
        let mut socket = TcpSocket::new(stack, &mut rx_buf, &mut tx_buf);
        socket.set_timeout(Some(Duration::from_secs(90)));
        if socket.connect((broker, config.broker_port)).await.is_err() {
            warn!("broker unreachable; retrying in 5 s");
            Timer::after_secs(5).await;
            continue;
        }
        let Ok(conn) = session.connect(socket).await else {
            warn!("MQTT connect refused; retrying in 5 s");
            Timer::after_secs(5).await;
            continue;
        };
        let mut uplink = MqttUplink::new(conn, Duration::from_secs(10));
        if uplink.announce(&down_topic, &status_topic).await.is_err() {
            continue;
        }
        info!("connected to the broker");
        // The session loop: sample, report, flush, answer downlinks.
        loop {
            watchdog.pet();
            let now = uptime_ms();
            if let Some(v) = pressure(&mut adc, &calibration).await {
                if let Some(alarm) = low_pressure.check(&mut watch_state, v, now) {
                    let _ = node.report(
                        &node::pipe::report(Trigger::Threshold, &[(Quantity::Pressure, v)]),
                        now,
                        alarm,
                    );
                } else if schedule.report_due(now) {
                    let _ = node.report(
                        &node::pipe::report(Trigger::Periodic, &[(Quantity::Pressure, v)]),
                        now,
                        false,
                    );
                }
            }
            if status.report_due(now) {
                let _ = node.report_status(now, None, -60);
            }
            if node.flush(&mut uplink).await.is_err() {
                warn!(
                    "publish failed; {} frames kept, reconnecting",
                    node.queue.len()
                );
                break;
            }
            while let Some(frame) = uplink.take_downlink() {
                match node.handle_downlink(&frame, uptime_ms(), &mut storage) {
                    Ok(_) => schedule.report_ms = u64::from(node.report_interval_s()) * 1000,
                    Err(_) => warn!("downlink refused"),
                }
            }
            let wake = schedule.next_wake(uptime_ms());
            let wait = wake.saturating_sub(uptime_ms()).max(100);
            if uplink.idle(Duration::from_millis(wait)).await.is_err() {
                break;
            }
        }
    }
}
