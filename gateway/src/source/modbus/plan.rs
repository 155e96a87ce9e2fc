//! Request planning: a profile's register map becomes a few block reads. The words of a block
//! become field values in [`crate::decode::registers`].

use device_profiles::modbus::{RegisterMap, RegisterTable};

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

#[cfg(test)]
mod tests {
    use super::*;
    use device_profiles::Catalog;

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
