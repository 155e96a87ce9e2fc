//! Request planning and decoding: a profile's register map becomes a few block reads, and the
//! words of a block become field values.

use device_profiles::modbus::{DataType, Register, RegisterMap, RegisterTable, WordOrder};

/// One read request: `count` entries of `table` from protocol address `start`, and the
/// registers it carries (index in the map, offset in the block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Table.
    pub table: RegisterTable,
    /// First protocol (0-based) address.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// `(register index in the map, offset from start)`.
    pub registers: Vec<(usize, u16)>,
}

/// Merges the map's registers into block reads: same table, at most `max_block_registers` long,
/// reading over gaps of at most `max_gap` unused registers.
pub fn plan(map: &RegisterMap) -> Vec<Block> {
    let mut regs: Vec<(RegisterTable, u16, u16, usize)> = map
        .registers
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let a = r.protocol_address(map.address_base)?;
            Some((r.table, a, r.data_type.width(), i))
        })
        .collect();
    regs.sort_by_key(|&(t, a, _, _)| (t, a));
    let mut blocks: Vec<Block> = Vec::new();
    for (table, address, width, i) in regs {
        if let Some(b) = blocks.last_mut() {
            let end = b.start + b.count;
            let new_end = address + width;
            if b.table == table
                && address >= end
                && address - end <= map.max_gap
                && new_end - b.start <= map.max_block_registers
            {
                b.count = new_end - b.start;
                b.registers.push((i, address - b.start));
                continue;
            }
        }
        blocks.push(Block {
            table,
            start: address,
            count: width,
            registers: vec![(i, 0)],
        });
    }
    blocks
}

/// The value of `register` from its words (or its bit), scaled: `raw × scale + offset`.
pub fn decode(register: &Register, words: &[u16], bit: Option<bool>) -> Option<f64> {
    if register.data_type == DataType::Bool {
        return bit.map(|b| if b { 1.0 } else { 0.0 });
    }
    let width = usize::from(register.data_type.width());
    let words = words.get(..width)?;
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    // Back to big-endian ABCD.
    match register.word_order {
        WordOrder::ABCD => {}
        WordOrder::CDAB => {
            let w: Vec<[u8; 2]> = bytes.chunks(2).rev().map(|c| [c[0], c[1]]).collect();
            bytes = w.concat();
        }
        WordOrder::BADC => bytes.chunks_mut(2).for_each(|c| c.swap(0, 1)),
        WordOrder::DCBA => bytes.reverse(),
    }
    let raw = match register.data_type {
        DataType::U16 => f64::from(u16::from_be_bytes(bytes[..2].try_into().ok()?)),
        DataType::I16 => f64::from(i16::from_be_bytes(bytes[..2].try_into().ok()?)),
        DataType::U32 => f64::from(u32::from_be_bytes(bytes[..4].try_into().ok()?)),
        DataType::I32 => f64::from(i32::from_be_bytes(bytes[..4].try_into().ok()?)),
        DataType::F32 => f64::from(f32::from_be_bytes(bytes[..4].try_into().ok()?)),
        DataType::U64 => u64::from_be_bytes(bytes[..8].try_into().ok()?) as f64,
        DataType::F64 => f64::from_be_bytes(bytes[..8].try_into().ok()?),
        DataType::Bool => return None,
    };
    Some(raw * register.scale + register.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_profiles::Catalog;

    fn reg(data_type: DataType, word_order: WordOrder, scale: f64) -> Register {
        Register {
            field: "x".into(),
            table: RegisterTable::Holding,
            address: 1,
            data_type,
            word_order,
            scale,
            offset: 0.0,
        }
    }

    #[test]
    fn every_type_and_word_order_decodes() {
        // 123.456f32 = 0x42F6_E979.
        let f = |o| {
            decode(
                &reg(DataType::F32, o, 1.0),
                &match o {
                    WordOrder::ABCD => [0x42F6, 0xE979],
                    WordOrder::CDAB => [0xE979, 0x42F6],
                    WordOrder::BADC => [0xF642, 0x79E9],
                    WordOrder::DCBA => [0x79E9, 0xF642],
                },
                None,
            )
            .unwrap()
        };
        for o in [
            WordOrder::ABCD,
            WordOrder::CDAB,
            WordOrder::BADC,
            WordOrder::DCBA,
        ] {
            assert!((f(o) - 123.456).abs() < 1e-4, "{o:?}: {}", f(o));
        }
        assert_eq!(
            decode(&reg(DataType::U16, WordOrder::ABCD, 0.001), &[1950], None),
            Some(1.95)
        );
        assert_eq!(
            decode(&reg(DataType::I16, WordOrder::ABCD, 0.1), &[0xFFE7], None),
            Some(-2.5)
        );
        assert_eq!(
            decode(&reg(DataType::U32, WordOrder::ABCD, 0.1), &[0, 2045], None),
            Some(204.5)
        );
        assert_eq!(
            decode(
                &reg(DataType::I32, WordOrder::CDAB, 1.0),
                &[0xFFFE, 0xFFFF],
                None
            ),
            Some(-2.0)
        );
        assert_eq!(
            decode(
                &reg(DataType::U64, WordOrder::ABCD, 1.0),
                &[0, 0, 0x075B, 0xCD15],
                None
            ),
            Some(123_456_789.0)
        );
        let mut b = reg(DataType::Bool, WordOrder::ABCD, 1.0);
        b.table = RegisterTable::Discrete;
        assert_eq!(decode(&b, &[], Some(true)), Some(1.0));
        assert_eq!(
            decode(&reg(DataType::U32, WordOrder::ABCD, 1.0), &[1], None),
            None,
            "short"
        );
    }

    #[test]
    fn adjacent_registers_are_merged_into_block_reads() {
        let catalog = Catalog::ganzhou().unwrap();
        let map = catalog.profiles["modbus-pipe-rtu"].modbus.clone().unwrap();
        let blocks = plan(&map);
        let shape: Vec<(RegisterTable, u16, u16, usize)> = blocks
            .iter()
            .map(|b| (b.table, b.start, b.count, b.registers.len()))
            .collect();
        // 1-based 40001–40008 → one holding block 0..8; 30001–30002 → one input block; one bit.
        assert_eq!(
            shape,
            vec![
                (RegisterTable::Holding, 0, 8, 3),
                (RegisterTable::Input, 0, 2, 2),
                (RegisterTable::Discrete, 0, 1, 1),
            ]
        );
        // A small block limit splits them; a gap beyond max_gap splits too.
        let mut small = map.clone();
        small.max_block_registers = 4;
        assert_eq!(
            plan(&small)
                .iter()
                .filter(|b| b.table == RegisterTable::Holding)
                .count(),
            2
        );
        let mut gapped = map.clone();
        gapped.registers[1].address = 20; // flow far away
        gapped.max_gap = 4;
        assert_eq!(
            plan(&gapped)
                .iter()
                .filter(|b| b.table == RegisterTable::Holding)
                .count(),
            2
        );
    }
}
