//! What the primary and its workers tell the orphan guard: fixed-size records,
//! one per packet.

/// The size of a record: what, the group, the leader's pid in `/proc`, the
/// start time of its leader.
pub(in crate::sys) const RECORD_SIZE: usize = 24;

/// One thing the orphan guard is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::sys) enum Record {
    /// Hold process group `group`, whose leader (process `group`, known to
    /// `/proc` as `seen`: another number where `/proc` is another PID
    /// namespace's; 0 when unknown) started at `start` (field 22 of its
    /// `/proc/SEEN/stat`; 0 when it could not be read).
    Register { group: i32, seen: i32, start: u64 },
    /// Group `group` is gone: the primary reaped its leader and killed it.
    Forget { group: i32 },
    /// Drop every group whose leader is no longer the process registered (a
    /// spawn failed: its child registered a group, then exited).
    Sweep,
}

impl Record {
    const REGISTER: i32 = 1;
    const FORGET: i32 = 2;
    const SWEEP: i32 = 3;

    /// The bytes of the record.
    pub(in crate::sys) fn encode(self) -> [u8; RECORD_SIZE] {
        let (what, group, seen, start) = match self {
            Self::Register { group, seen, start } => (Self::REGISTER, group, seen, start),
            Self::Forget { group } => (Self::FORGET, group, 0, 0),
            Self::Sweep => (Self::SWEEP, 0, 0, 0),
        };
        let mut bytes = [0; RECORD_SIZE];
        bytes[..4].copy_from_slice(&what.to_ne_bytes());
        bytes[4..8].copy_from_slice(&group.to_ne_bytes());
        bytes[8..12].copy_from_slice(&seen.to_ne_bytes());
        bytes[16..].copy_from_slice(&start.to_ne_bytes());
        bytes
    }

    /// The record in `bytes`, if they are one (a group is positive).
    pub(in crate::sys) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; RECORD_SIZE] = bytes.try_into().ok()?;
        let what = i32::from_ne_bytes(bytes[..4].try_into().ok()?);
        let group = i32::from_ne_bytes(bytes[4..8].try_into().ok()?);
        let seen = i32::from_ne_bytes(bytes[8..12].try_into().ok()?);
        let start = u64::from_ne_bytes(bytes[16..].try_into().ok()?);
        match what {
            Self::REGISTER if group > 0 && seen >= 0 => Some(Self::Register { group, seen, start }),
            Self::FORGET if group > 0 => Some(Self::Forget { group }),
            Self::SWEEP => Some(Self::Sweep),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_to_what_was_encoded_and_nothing_else_decodes() {
        for record in [
            Record::Register {
                group: 4242,
                seen: 94242,
                start: u64::MAX,
            },
            Record::Forget { group: 1 },
            Record::Sweep,
        ] {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
        let forget_nothing = Record::Forget { group: 0 }.encode();
        assert_eq!(Record::decode(&forget_nothing), None);
        assert_eq!(Record::decode(&forget_nothing[..4]), None);
        assert_eq!(Record::decode(&[0xff; RECORD_SIZE]), None);
    }
}
