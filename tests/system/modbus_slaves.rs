//! The simulator's Modbus slaves: the Modbus pipe RTU's register map over TCP and over RTU on
//! a pseudo-terminal, read with the tokio-modbus client; and their faults.

use std::time::Duration;

use simulator::modbus::{Fault, Slave, serve_rtu, serve_tcp};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::{ExceptionCode, Slave as Unit};

fn rtu_slave() -> Slave {
    let catalog = crate::support::catalog();
    let map = catalog.profiles["modbus-pipe-rtu"].modbus.clone().unwrap();
    Slave::new(
        1,
        &map,
        &[
            ("pressure", 0.25),
            ("flow", 204.5),
            ("total_volume", 123_456_789.0),
            ("well_level", 1.95),
            ("temperature", -2.5),
            ("pump_running", 1.0),
        ],
    )
}

/// Reads the whole map and checks the words against the register map, by hand.
async fn reads_the_map(ctx: &mut Context) {
    // 40001–40002 pressure f32 word-swapped (0.25 = 0x3E80_0000), 40003–40004 flow u32 in
    // 0.1 m3/h (2045), 40005–40008 totaliser u64.
    let holding = ctx.read_holding_registers(0, 8).await.unwrap().unwrap();
    assert_eq!(
        holding,
        vec![0x0000, 0x3E80, 0x0000, 2045, 0, 0, 0x075B, 0xCD15]
    );
    // 30001 level in mm, 30002 temperature in 0.1 °C signed.
    let input = ctx.read_input_registers(0, 2).await.unwrap().unwrap();
    assert_eq!(input, vec![1950, 0xFFE7]);
    assert_eq!(
        ctx.read_discrete_inputs(0, 1).await.unwrap().unwrap(),
        vec![true]
    );
    // Past the map: an exception, named.
    assert_eq!(
        ctx.read_holding_registers(100, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_slave_serves_the_register_map_and_its_faults() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slave = rtu_slave();
    let server = tokio::spawn(serve_tcp(listener, slave.clone()));
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Unit(1))
        .await
        .unwrap();
    reads_the_map(&mut ctx).await;
    slave.set("pressure", 0.5);
    assert_eq!(
        ctx.read_holding_registers(0, 2).await.unwrap().unwrap(),
        vec![0x0000, 0x3F00],
        "values change while polled"
    );

    let quick = Duration::from_millis(300);
    slave.set_fault(Fault::Exception(ExceptionCode::ServerDeviceBusy));
    assert_eq!(
        ctx.read_holding_registers(0, 2).await.unwrap(),
        Err(ExceptionCode::ServerDeviceBusy)
    );
    slave.set_fault(Fault::Slow(Duration::from_millis(800)));
    let late = tokio::time::timeout(quick, ctx.read_holding_registers(0, 2)).await;
    assert!(
        late.is_err(),
        "a slow slave answers after the poller's timeout"
    );
    slave.set_fault(Fault::Silence);
    let mut fresh = tokio_modbus::client::tcp::connect_slave(addr, Unit(1))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(quick, fresh.read_holding_registers(0, 2))
            .await
            .is_err()
    );
    // A slave answering with another unit id: the poller sees the mismatch.
    slave.set_fault(Fault::WrongUnit(7));
    let mut mixed = tokio_modbus::client::tcp::connect_slave(addr, Unit(1))
        .await
        .unwrap();
    let e = mixed
        .read_holding_registers(0, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unit_id: 7"), "{e}");
    slave.set_fault(Fault::None);
    // Another unit id on the same line gets no answer.
    let mut other = tokio_modbus::client::tcp::connect_slave(addr, Unit(2))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(quick, other.read_holding_registers(0, 2))
            .await
            .is_err()
    );
    let mut again = tokio_modbus::client::tcp::connect_slave(addr, Unit(1))
        .await
        .unwrap();
    assert_eq!(
        again.read_input_registers(0, 1).await.unwrap().unwrap(),
        vec![1950]
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtu_slave_answers_on_a_pseudo_terminal() {
    let pty = system_tests::raw_pty();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    let slave = rtu_slave();
    let server = tokio::spawn(async move { serve_rtu(&path, 9600, slave).await });
    let master = tokio::fs::File::from_std(std::fs::File::from(pty.master));
    let mut ctx = tokio_modbus::client::rtu::attach_slave(master, Unit(1));
    let read = tokio::time::timeout(Duration::from_secs(10), reads_the_map(&mut ctx)).await;
    assert!(
        read.is_ok(),
        "the RTU slave did not answer on the pseudo-terminal"
    );
    server.abort();
    drop(pty.slave);
}
