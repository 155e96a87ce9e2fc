//! Modbus register maps in device profiles.
//!
//! # 0- and 1-based addresses
//!
//! Datasheets number registers from 1 (often with a table prefix: holding register 40001 is the
//! first), while the Modbus protocol data unit carries addresses from 0. A profile says which
//! one it uses with `address_base = 0` or `address_base = 1`: there is no default, because
//! guessing wrong reads the neighbouring register and still looks plausible.
//! [`Register::protocol_address`] is always the 0-based address that goes on the wire.

use serde::Deserialize;

/// How a profile's register addresses are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u8")]
pub enum AddressBase {
    /// Addresses are protocol (PDU) addresses: the first register is 0.
    Zero,
    /// Addresses are register numbers from the datasheet: the first register is 1.
    One,
}

impl TryFrom<u8> for AddressBase {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(AddressBase::Zero),
            1 => Ok(AddressBase::One),
            other => Err(format!("address_base must be 0 or 1, not {other}")),
        }
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterTable {
    /// Read/write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
}

impl RegisterTable {
    /// Whether the table holds single bits.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterTable::Coil | RegisterTable::Discrete)
    }

    /// The name used in profiles.
    pub fn name(self) -> &'static str {
        match self {
            RegisterTable::Holding => "holding",
            RegisterTable::Input => "input",
            RegisterTable::Coil => "coil",
            RegisterTable::Discrete => "discrete",
        }
    }
}

/// How the registers of one value are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// One bit (coils and discrete inputs only).
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, IEEE 754 double precision.
    F64,
}

impl DataType {
    /// The name used in profiles.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::U64 => "u64",
            DataType::F64 => "f64",
        }
    }

    /// How many 16-bit registers (or bits, for `Bool`) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::F64 => 4,
        }
    }
}

/// Byte and word order of multi-register values, named by where the bytes of a big-endian
/// `ABCD` value end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum WordOrder {
    /// Big-endian words, big-endian bytes (the Modbus convention).
    #[default]
    ABCD,
    /// Words swapped, bytes big-endian ("word swap", common on PLCs).
    CDAB,
    /// Words in order, bytes swapped in each word.
    BADC,
    /// Fully little-endian.
    DCBA,
}

/// A profile's Modbus register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// Whether `address` values count from 0 (protocol) or 1 (datasheet). Required.
    pub address_base: AddressBase,
    /// Default unit (slave) id; the site may override it per device.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Largest block the planner may read in one request (the protocol allows 125 registers).
    #[serde(default = "default_max_block")]
    pub max_block_registers: u16,
    /// Largest run of unused registers the planner may read over to merge two blocks.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// The values read from the device.
    #[serde(rename = "register")]
    pub registers: Vec<Register>,
}

fn default_unit_id() -> u8 {
    1
}
fn default_max_block() -> u16 {
    64
}
fn default_max_gap() -> u16 {
    8
}

/// One value in the register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The profile field this register feeds (its unit and valid range come from there).
    pub field: String,
    /// Which table it is read from.
    pub table: RegisterTable,
    /// Its first address, counted as `address_base` says.
    pub address: u16,
    /// How to interpret the registers.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Byte and word order for values wider than one register.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl Register {
    /// The 0-based address that goes into the request, or `None` for address 0 in a 1-based
    /// map.
    pub fn protocol_address(&self, base: AddressBase) -> Option<u16> {
        match base {
            AddressBase::Zero => Some(self.address),
            AddressBase::One => self.address.checked_sub(1),
        }
    }
}

impl RegisterMap {
    /// Checks addresses, types and overlaps; returns `(path, reason)` pairs.
    pub(crate) fn check(&self, field_names: &[&str]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_block_registers == 0 || self.max_block_registers > 125 {
            problems.push((
                "modbus.max_block_registers".into(),
                format!(
                    "max_block_registers must be 1..=125 (the protocol's limit), not {}",
                    self.max_block_registers
                ),
            ));
        }
        if self.registers.is_empty() {
            problems.push((
                "modbus".into(),
                "a register map needs at least one [[modbus.register]]".into(),
            ));
        }
        let mut spans: Vec<(RegisterTable, u32, u32, usize)> = Vec::new();
        for (i, r) in self.registers.iter().enumerate() {
            let path = format!("modbus.register[{i}]");
            if !field_names.contains(&r.field.as_str()) {
                problems.push((
                    format!("{path}.field"),
                    format!(
                        "register names field \"{}\", which the profile does not define",
                        r.field
                    ),
                ));
            }
            if r.table.is_bits() != (r.data_type == DataType::Bool) {
                problems.push((
                    format!("{path}.type"),
                    format!(
                        "register \"{}\": type {} cannot be read from the {} table (bool goes with coil/discrete, numbers with holding/input)",
                        r.field,
                        r.data_type.name(),
                        r.table.name()
                    ),
                ));
            }
            if !r.scale.is_finite() || r.scale == 0.0 || !r.offset.is_finite() {
                problems.push((
                    format!("{path}.scale"),
                    format!(
                        "register \"{}\": scale must be finite and non-zero, offset finite",
                        r.field
                    ),
                ));
            }
            let Some(start) = r.protocol_address(self.address_base) else {
                problems.push((
                    format!("{path}.address"),
                    format!(
                        "register \"{}\": address 0 does not exist when address_base = 1",
                        r.field
                    ),
                ));
                continue;
            };
            let end = u32::from(start) + u32::from(r.data_type.width());
            if end > 65_536 {
                problems.push((
                    format!("{path}.address"),
                    format!("register \"{}\" runs past address 65535", r.field),
                ));
                continue;
            }
            for &(table, s, e, j) in &spans {
                if table == r.table && u32::from(start) < e && s < end {
                    let other = &self.registers[j];
                    problems.push((
                        format!("{path}.address"),
                        format!(
                            "register \"{}\" ({} {}..={}) overlaps register \"{}\" ({} {}..={})",
                            r.field,
                            r.table.name(),
                            r.address,
                            u32::from(r.address) + u32::from(r.data_type.width()) - 1,
                            other.field,
                            other.table.name(),
                            other.address,
                            u32::from(other.address) + u32::from(other.data_type.width()) - 1,
                        ),
                    ));
                }
            }
            spans.push((r.table, u32::from(start), end, i));
        }
        problems
    }
}
