//! Bytes on disk: the log header and its records (see `docs/format.md`).

use super::le::{get_u32, u32_at, u64_at};

/// First bytes of every pool log.
pub const MAGIC: [u8; 8] = *b"UCTXPOOL";
/// The format this code writes. Version 3 is the log of version 2 with
/// the checkpoint beside it (`pool.ckpt`) and index segments whose
/// checksums are checked when written and by `uctx doctor --verify`, not on
/// open; a version-2 log reads as it is (its first writer writes a
/// checkpoint, its next compaction a version-3 header).
pub const VERSION: u32 = 3;
/// The oldest format this code reads.
pub const OLDEST_READ: u32 = 2;
/// Bytes before each record's payload: len u32, crc u32, type u8.
pub const RECORD_HEADER: usize = 9;
/// Largest payload a record may carry (a guard against reading a torn length).
pub const MAX_PAYLOAD: usize = 256 << 20;

pub const T_SLICE: u8 = 1;
pub const T_WITNESS: u8 = 2;
pub const T_DELETE_NS: u8 = 3;
pub const T_EVICT: u8 = 4;
pub const T_BUDGET: u8 = 5;
pub const T_CLEAR: u8 = 6;
pub const T_NEXT_ID: u8 = 7;
pub const T_DICT: u8 = 8;

/// Fixed bytes of a slice payload before its vector (the last four are
/// the vector's scale).
pub const SLICE_FIXED: usize = 8 * 4 + 4 * 3 + 1 + 1 + 2 + 2 + 4 + 4 + 4;

/// The log header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub version: u32,
    pub dim: u32,
    pub generation: u64,
    pub created_ms: u64,
    pub fingerprint: String,
}

/// Why a header could not be read.
#[derive(Debug, PartialEq)]
pub enum HeaderError {
    /// Not a pool log at all.
    BadMagic,
    /// Written by a newer (or unknown) format.
    Version(u32),
    /// Too short or checksum mismatch.
    Damaged(&'static str),
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let fp = self.fingerprint.as_bytes();
        let fp = &fp[..fp.len().min(u16::MAX as usize)];
        let len = 8 + 4 + 4 + 4 + 8 + 8 + 2 + fp.len() + 4;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(&self.dim.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.created_ms.to_le_bytes());
        b.extend_from_slice(&(fp.len() as u16).to_le_bytes());
        b.extend_from_slice(fp);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header's total length, from its first 16 bytes.
    pub fn peek_len(first16: &[u8]) -> Result<(u32, usize), HeaderError> {
        if first16.len() < 16 {
            return Err(HeaderError::Damaged("shorter than a header"));
        }
        if first16[..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u32_at(first16, 8);
        if !(OLDEST_READ..=VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let len = u32_at(first16, 12) as usize;
        if !(42..=70_000).contains(&len) {
            return Err(HeaderError::Damaged("header length out of range"));
        }
        Ok((version, len))
    }

    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        let (version, len) = Header::peek_len(b)?;
        if b.len() < len {
            return Err(HeaderError::Damaged("truncated header"));
        }
        let crc = u32_at(b, len - 4);
        if crc32fast::hash(&b[..len - 4]) != crc {
            return Err(HeaderError::Damaged("header checksum mismatch"));
        }
        let fp_len = u16_at(b, 36) as usize;
        if 38 + fp_len + 4 != len {
            return Err(HeaderError::Damaged(
                "header length disagrees with its fields",
            ));
        }
        Ok(Header {
            version,
            dim: u32_at(b, 16),
            generation: u64_at(b, 20),
            created_ms: u64_at(b, 28),
            fingerprint: String::from_utf8_lossy(&b[38..38 + fp_len]).into_owned(),
        })
    }
}

/// A slice record, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRec {
    pub id: u64,
    pub time_ms: u64,
    pub turn: u64,
    pub last_used_seq: u64,
    pub tokens: u32,
    pub salience: f32,
    pub uses: u32,
    pub source: u8,
    pub pinned: bool,
    pub namespace: String,
    pub ext_id: Option<String>,
    pub text_len: u32,
    /// The zstd dictionary the text was compressed with, if any.
    pub dict: Option<u32>,
    /// One zstd frame.
    pub text_z: Vec<u8>,
    /// The vector, quantised to i8 with one scale (see `pool::vector`).
    pub scale: f32,
    pub vector: Vec<i8>,
}

/// One witness event as logged: kind (0 used, 1 recalled, 2 pin, 3 unpin), id, seq.
pub type WitnessRec = (u8, u64, u64);

/// Any record.
#[derive(Clone, Debug, PartialEq)]
pub enum Rec {
    Slice(SliceRec),
    Witness(Vec<WitnessRec>),
    DeleteNs {
        namespace: String,
        upto: u64,
    },
    Evict(Vec<u64>),
    Budget(u64),
    Clear {
        upto: u64,
    },
    NextId(u64),
    /// A zstd dictionary that later slices' text may be compressed with.
    Dict {
        id: u32,
        bytes: Vec<u8>,
    },
}

/// Append a framed record to `out`; returns its total length.
pub fn encode(rec: &Rec, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    let ty = match rec {
        Rec::Slice(s) => {
            out.extend_from_slice(&s.id.to_le_bytes());
            out.extend_from_slice(&s.time_ms.to_le_bytes());
            out.extend_from_slice(&s.turn.to_le_bytes());
            out.extend_from_slice(&s.last_used_seq.to_le_bytes());
            out.extend_from_slice(&s.tokens.to_le_bytes());
            out.extend_from_slice(&s.salience.to_le_bytes());
            out.extend_from_slice(&s.uses.to_le_bytes());
            out.push(s.source);
            out.push(
                u8::from(s.pinned)
                    | if s.ext_id.is_some() { 2 } else { 0 }
                    | if s.dict.is_some() { 4 } else { 0 },
            );
            let ns = s.namespace.as_bytes();
            let ext = s.ext_id.as_deref().unwrap_or("").as_bytes();
            out.extend_from_slice(&(ns.len() as u16).to_le_bytes());
            out.extend_from_slice(&(ext.len() as u16).to_le_bytes());
            out.extend_from_slice(&s.text_len.to_le_bytes());
            let z_len = s.text_z.len() + if s.dict.is_some() { 4 } else { 0 };
            out.extend_from_slice(&(z_len as u32).to_le_bytes());
            out.extend_from_slice(&s.scale.to_le_bytes());
            out.extend_from_slice(bytemuck::cast_slice(&s.vector));
            out.extend_from_slice(ns);
            out.extend_from_slice(ext);
            if let Some(d) = s.dict {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&s.text_z);
            T_SLICE
        }
        Rec::Witness(ev) => {
            out.extend_from_slice(&(ev.len() as u32).to_le_bytes());
            for (kind, id, seq) in ev {
                out.push(*kind);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
            }
            T_WITNESS
        }
        Rec::DeleteNs { namespace, upto } => {
            out.extend_from_slice(&upto.to_le_bytes());
            out.extend_from_slice(namespace.as_bytes());
            T_DELETE_NS
        }
        Rec::Evict(ids) => {
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
            T_EVICT
        }
        Rec::Budget(b) => {
            out.extend_from_slice(&b.to_le_bytes());
            T_BUDGET
        }
        Rec::Clear { upto } => {
            out.extend_from_slice(&upto.to_le_bytes());
            T_CLEAR
        }
        Rec::NextId(n) => {
            out.extend_from_slice(&n.to_le_bytes());
            T_NEXT_ID
        }
        Rec::Dict { id, bytes } => {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(bytes);
            T_DICT
        }
    };
    let payload_len = (out.len() - start - RECORD_HEADER) as u32;
    out[start + 8] = ty;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Parse a record header: (payload length, crc, type).
pub fn frame(b: &[u8]) -> (usize, u32, u8) {
    (u32_at(b, 0) as usize, u32_at(b, 4), b[8])
}

/// Check a whole framed record (header and payload) against its checksum.
pub fn check(rec: &[u8]) -> bool {
    if rec.len() < RECORD_HEADER {
        return false;
    }
    let (len, crc, _) = frame(rec);
    rec.len() == RECORD_HEADER + len && crc32fast::hash(&rec[8..]) == crc
}

/// Bytes of a record that [`plausible`] looks at: its header and its
/// payload's fixed fields (a slice's are the longest).
pub const PROBE: usize = RECORD_HEADER + SLICE_FIXED;

/// First bytes of a zstd dictionary (the format `zstd::dict` trains).
const ZSTD_DICT_MAGIC: [u8; 4] = 0xEC30_A437u32.to_le_bytes();

/// Whether `b`, the first bytes of a candidate record (up to [`PROBE`]),
/// could frame one: a known type, and a payload length that agrees with
/// the fields it implies. A cheap test, ahead of the checksum, when damaged
/// bytes are searched for the next record.
pub fn plausible(b: &[u8], dim: usize) -> bool {
    if b.len() < RECORD_HEADER {
        return false;
    }
    let (len, _, ty) = frame(b);
    let p = &b[RECORD_HEADER..];
    let count = || get_u32(p, 0).map(|n| n as usize);
    match ty {
        T_SLICE => {
            p.len() >= SLICE_FIXED - 4
                && len
                    == SLICE_FIXED
                        + dim
                        + u16_at(p, 46) as usize
                        + u16_at(p, 48) as usize
                        + u32_at(p, 54) as usize
        }
        T_WITNESS => count().is_some_and(|n| len == 4 + 17 * n),
        T_EVICT => count().is_some_and(|n| len == 4 + 8 * n),
        T_DELETE_NS => (8..=8 + u16::MAX as usize).contains(&len),
        T_BUDGET | T_CLEAR | T_NEXT_ID => len == 8,
        T_DICT => len > 8 && p.len() >= 8 && p[4..8] == ZSTD_DICT_MAGIC,
        _ => false,
    }
}

/// Decode a checked record's type byte and payload. `None` when its fields
/// do not fit together (which a checksum that matched makes a format bug or
/// a newer writer).
pub fn decode(ty: u8, p: &[u8], dim: usize) -> Option<Rec> {
    Some(match ty {
        T_SLICE => Rec::Slice(decode_slice(p, dim)?),
        T_WITNESS => {
            let n = get_u32(p, 0)? as usize;
            if p.len() != 4 + n * 17 {
                return None;
            }
            Rec::Witness(
                (0..n)
                    .map(|i| {
                        let o = 4 + i * 17;
                        (p[o], u64_at(p, o + 1), u64_at(p, o + 9))
                    })
                    .collect(),
            )
        }
        T_DELETE_NS => {
            if p.len() < 8 {
                return None;
            }
            Rec::DeleteNs {
                upto: u64_at(p, 0),
                namespace: String::from_utf8(p[8..].to_vec()).ok()?,
            }
        }
        T_EVICT => {
            let n = get_u32(p, 0)? as usize;
            if p.len() != 4 + n * 8 {
                return None;
            }
            Rec::Evict((0..n).map(|i| u64_at(p, 4 + i * 8)).collect())
        }
        T_BUDGET if p.len() == 8 => Rec::Budget(u64_at(p, 0)),
        T_CLEAR if p.len() == 8 => Rec::Clear { upto: u64_at(p, 0) },
        T_NEXT_ID if p.len() == 8 => Rec::NextId(u64_at(p, 0)),
        T_DICT if p.len() > 4 => Rec::Dict {
            id: u32_at(p, 0),
            bytes: p[4..].to_vec(),
        },
        _ => return None,
    })
}

/// The fixed fields and vector of a slice payload (no text decompression).
pub fn decode_slice(p: &[u8], dim: usize) -> Option<SliceRec> {
    if p.len() < SLICE_FIXED + dim {
        return None;
    }
    let ns_len = u16_at(p, 46) as usize;
    let ext_len = u16_at(p, 48) as usize;
    let text_len = u32_at(p, 50);
    let z_len = u32_at(p, 54) as usize;
    let vec_at = SLICE_FIXED;
    let ns_at = vec_at + dim;
    let ext_at = ns_at + ns_len;
    let z_at = ext_at + ext_len;
    if p.len() != z_at + z_len {
        return None;
    }
    let flags = p[45];
    let has_dict = flags & 4 != 0;
    if has_dict && z_len < 4 {
        return None;
    }
    let (dict, text_at) = if has_dict {
        (Some(u32_at(p, z_at)), z_at + 4)
    } else {
        (None, z_at)
    };
    Some(SliceRec {
        id: u64_at(p, 0),
        time_ms: u64_at(p, 8),
        turn: u64_at(p, 16),
        last_used_seq: u64_at(p, 24),
        tokens: u32_at(p, 32),
        salience: f32::from_le_bytes(p[36..40].try_into().ok()?),
        uses: u32_at(p, 40),
        source: p[44],
        pinned: flags & 1 != 0,
        namespace: String::from_utf8(p[ns_at..ext_at].to_vec()).ok()?,
        ext_id: if flags & 2 != 0 {
            Some(String::from_utf8(p[ext_at..z_at].to_vec()).ok()?)
        } else {
            None
        },
        text_len,
        dict,
        text_z: p[text_at..].to_vec(),
        scale: f32::from_le_bytes(p[58..62].try_into().ok()?),
        vector: bytemuck::cast_slice(&p[vec_at..ns_at]).to_vec(),
    })
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_version_check() {
        let h = Header {
            version: VERSION,
            dim: 256,
            generation: 3,
            created_ms: 42,
            fingerprint: "enc:abc:256".into(),
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut newer = b.clone();
        newer[8] = 9;
        assert_eq!(Header::decode(&newer), Err(HeaderError::Version(9)));
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(matches!(Header::decode(&bad), Err(HeaderError::Damaged(_))));
        assert_eq!(
            Header::decode(b"NOTAPOOLxxxxxxxxxxxx"),
            Err(HeaderError::BadMagic)
        );
    }

    /// One record of every type (the slice of dimension 2).
    fn samples() -> Vec<Rec> {
        vec![
            Rec::Slice(SliceRec {
                id: 7,
                time_ms: 1,
                turn: 2,
                last_used_seq: 7,
                tokens: 9,
                salience: 0.5,
                uses: 1,
                source: 3,
                pinned: true,
                namespace: "sess".into(),
                ext_id: Some("doc-1".into()),
                text_len: 5,
                dict: Some(3),
                text_z: vec![1, 2, 3],
                scale: 0.25,
                vector: vec![64, -127],
            }),
            Rec::Witness(vec![(0, 7, 9), (2, 7, 10)]),
            Rec::DeleteNs {
                namespace: "x".into(),
                upto: 8,
            },
            Rec::Evict(vec![1, 2, 3]),
            Rec::Budget(1 << 30),
            Rec::Clear { upto: 5 },
            Rec::NextId(11),
            Rec::Dict {
                id: 2,
                bytes: [&ZSTD_DICT_MAGIC[..], &[9, 8, 7]].concat(),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        for r in samples() {
            let mut out = Vec::new();
            let n = encode(&r, &mut out);
            assert_eq!(n, out.len());
            assert!(check(&out));
            let (_, _, ty) = frame(&out);
            assert_eq!(decode(ty, &out[RECORD_HEADER..], 2), Some(r));
            out[RECORD_HEADER] ^= 0x40;
            assert!(!check(&out));
        }
    }

    #[test]
    fn every_record_is_plausible_and_zeros_or_shifted_frames_are_not() {
        for r in samples() {
            let mut out = Vec::new();
            encode(&r, &mut out);
            let probe = &out[..out.len().min(PROBE)];
            assert!(plausible(probe, 2), "{r:?}");
            if let Rec::Slice(_) = r {
                assert!(!plausible(probe, 3), "a slice of another dimension");
            }
            // Off by a byte, the frame's fields no longer agree.
            let shifted = &out[1..out.len().min(PROBE + 1)];
            assert!(!plausible(shifted, 2), "{r:?}");
        }
        assert!(!plausible(&[0; PROBE], 2));
        assert!(!plausible(&[0xFF; PROBE], 2));
        // A dictionary without zstd's magic is not taken for one.
        let mut out = Vec::new();
        encode(
            &Rec::Dict {
                id: 1,
                bytes: vec![7; 40],
            },
            &mut out,
        );
        assert!(!plausible(&out, 2));
    }
}
