//! Modbus registers to field values: the words (or the bit) a poll read, in the profile's data
//! type and word order, scaled. The readings they make pass the same checks as published ones
//! ([`super::Verifier::polled`]).

use device_profiles::modbus::{DataType, Register, WordOrder};

/// The value of `register` from its words (or its bit), scaled: `raw × scale + offset`.
pub fn value(register: &Register, words: &[u16], bit: Option<bool>) -> Option<f64> {
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
    use device_profiles::modbus::RegisterTable;

    use super::*;

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
            value(
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
            value(&reg(DataType::U16, WordOrder::ABCD, 0.001), &[1950], None),
            Some(1.95)
        );
        assert_eq!(
            value(&reg(DataType::I16, WordOrder::ABCD, 0.1), &[0xFFE7], None),
            Some(-2.5)
        );
        assert_eq!(
            value(&reg(DataType::U32, WordOrder::ABCD, 0.1), &[0, 2045], None),
            Some(204.5)
        );
        assert_eq!(
            value(
                &reg(DataType::I32, WordOrder::CDAB, 1.0),
                &[0xFFFE, 0xFFFF],
                None
            ),
            Some(-2.0)
        );
        assert_eq!(
            value(
                &reg(DataType::U64, WordOrder::ABCD, 1.0),
                &[0, 0, 0x075B, 0xCD15],
                None
            ),
            Some(123_456_789.0)
        );
        let mut b = reg(DataType::Bool, WordOrder::ABCD, 1.0);
        b.table = RegisterTable::Discrete;
        assert_eq!(value(&b, &[], Some(true)), Some(1.0));
        assert_eq!(
            value(&reg(DataType::U32, WordOrder::ABCD, 1.0), &[1], None),
            None,
            "short"
        );
    }
}
