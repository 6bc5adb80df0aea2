//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, 44 bytes, little endian).

/// Header length.
pub const HDR_LEN: usize = 44;
/// Largest payload runv-vmm sends or accepts in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    #![allow(missing_docs)]
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub mod shutdown {
    /// The peer will receive no more data.
    pub const RCV: u32 = 1;
    /// The peer will send no more data.
    pub const SEND: u32 = 2;
}

/// A decoded header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

impl VsockHeader {
    /// Decodes a header.
    pub fn decode(b: &[u8; HDR_LEN]) -> Self {
        VsockHeader {
            src_cid: le_u64(&b[0..]),
            dst_cid: le_u64(&b[8..]),
            src_port: le_u32(&b[16..]),
            dst_port: le_u32(&b[20..]),
            len: le_u32(&b[24..]),
            type_: le_u16(&b[28..]),
            op: le_u16(&b[30..]),
            flags: le_u32(&b[32..]),
            buf_alloc: le_u32(&b[36..]),
            fwd_cnt: le_u32(&b[40..]),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 262144,
            fwd_cnt: 77,
        };
        assert_eq!(VsockHeader::decode(&h.encode()), h);
        assert_eq!(&h.encode()[30..32], &[5, 0]);
    }
}
