//! A guest payload that echoes vsock stream data: a minimal virtio-vsock driver in 32-bit
//! code, assembled here byte by byte. It brings up the device at 0xd000_0000 (three queues of
//! 16), posts 16 RX buffers of 4 KiB, accepts the host's `CONNECT 1024`, then for every RW
//! packet sends the same bytes back on TX (header + a descriptor pointing at the received
//! payload), waits for the device to take it, and gives the RX buffer back. Other packets
//! (credit updates) are only given back. Used entries come back in ring order, so the k-th RX
//! packet is in buffer k mod 16.

#![allow(clippy::cast_possible_truncation)]

const B: u32 = 0xd000_0000;
const RXQ: u32 = 0x20_0000;
const TXQ: u32 = 0x21_0000;
const EVQ: u32 = 0x22_0000;
const RX_BUFS: u32 = 0x30_0000;
const HDR: u32 = 0x40_0000;
const RESP: u32 = 0x40_0040;
/// fwd_cnt: payload bytes the guest has consumed.
const FWD: u32 = HDR + 40;
const QSIZE: u32 = 16;

fn mov_mem(c: &mut Vec<u8>, addr: u32, value: u32) {
    c.extend_from_slice(&[0xc7, 0x05]);
    c.extend_from_slice(&addr.to_le_bytes());
    c.extend_from_slice(&value.to_le_bytes());
}

fn op_abs(c: &mut Vec<u8>, opcode: &[u8], addr: u32) {
    c.extend_from_slice(opcode);
    c.extend_from_slice(&addr.to_le_bytes());
}

/// Spins until the used index of the queue at `q` equals the 16-bit register named by the
/// ModRM byte of `cmp ax, reg` (0xf0: si, 0xf8: di), or, with `until_differs`, differs from it.
fn wait_used(c: &mut Vec<u8>, q: u32, modrm: u8, until_differs: bool) {
    op_abs(c, &[0x0f, 0xb7, 0x05], q + 0x2002); // movzx eax, word [used.idx]
    c.extend_from_slice(&[0x66, 0x39, modrm]); // cmp ax, si/di
    let jcc = if until_differs { 0x74 } else { 0x75 }; // je/jne back
    c.extend_from_slice(&[jcc, 0xf4]); // back 12 bytes, to the movzx
}

fn queue_setup(c: &mut Vec<u8>, sel: u32, q: u32) {
    for (off, v) in [
        (0x30, sel),
        (0x38, QSIZE),
        (0x80, q),
        (0x90, q + 0x1000),
        (0xa0, q + 0x2000),
        (0x44, 1),
    ] {
        mov_mem(c, B + off, v);
    }
}

pub fn code() -> Vec<u8> {
    let mut c = Vec::new();
    for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb)] {
        mov_mem(&mut c, B + off, v);
    }
    queue_setup(&mut c, 0, RXQ);
    queue_setup(&mut c, 1, TXQ);
    queue_setup(&mut c, 2, EVQ);
    for i in 0..QSIZE {
        let d = RXQ + 16 * i;
        mov_mem(&mut c, d, RX_BUFS + i * 0x1000);
        mov_mem(&mut c, d + 8, 0x1000);
        mov_mem(&mut c, d + 12, 2); // WRITE
    }
    for j in 0..QSIZE / 2 {
        mov_mem(&mut c, RXQ + 0x1004 + 4 * j, (2 * j) | ((2 * j + 1) << 16));
    }
    mov_mem(&mut c, RXQ + 0x1000, QSIZE << 16); // avail idx = 16
                                                // TX descriptors: 0 = RW header -> 1 = payload; 2 = RESPONSE header.
    mov_mem(&mut c, TXQ, HDR);
    mov_mem(&mut c, TXQ + 8, 44);
    mov_mem(&mut c, TXQ + 12, 1 | (1 << 16)); // NEXT, next = 1
    mov_mem(&mut c, TXQ + 32, RESP);
    mov_mem(&mut c, TXQ + 40, 44);
    // Headers: 3:1024 -> 2:<port>, STREAM, buf_alloc 256 KiB.
    for (h, op) in [(HDR, 5u32), (RESP, 2)] {
        mov_mem(&mut c, h, 3);
        mov_mem(&mut c, h + 8, 2);
        mov_mem(&mut c, h + 16, 1024);
        mov_mem(&mut c, h + 28, 1 | (op << 16));
        mov_mem(&mut c, h + 36, 256 * 1024);
    }
    mov_mem(&mut c, B + 0x70, 0xf); // DRIVER_OK
    mov_mem(&mut c, B + 0x50, 0); // notify RX
    c.extend_from_slice(&[0x31, 0xf6]); // xor esi, esi   (RX used seen)
    c.extend_from_slice(&[0x31, 0xff]); // xor edi, edi   (TX avail idx)
    wait_used(&mut c, RXQ, 0xf0, true); // until RX used != si: the REQUEST
    op_abs(&mut c, &[0x8b, 0x2d], RX_BUFS + 16); // mov ebp, [req.src_port]
    op_abs(&mut c, &[0x89, 0x2d], HDR + 20); // mov [HDR.dst_port], ebp
    op_abs(&mut c, &[0x89, 0x2d], RESP + 20); // mov [RESP.dst_port], ebp
    mov_mem(&mut c, TXQ + 0x1004, 2); // TX ring[0] = 2
    mov_mem(&mut c, TXQ + 0x1000, 1 << 16); // TX avail idx = 1
    mov_mem(&mut c, B + 0x50, 1); // notify TX
    c.push(0x47); // inc edi
    wait_used(&mut c, TXQ, 0xf8, false); // until TX used == di
                                         // Give back RX buffers from k = esi: shared tail (label `repost`) is below; here k = 0.
    let mut lp = Vec::new();
    // repost: inc esi; lea eax,[esi+16]; mov [RX avail idx], ax; notify RX
    lp.push(0x46);
    lp.extend_from_slice(&[0x8d, 0x46, 0x10]);
    op_abs(&mut lp, &[0x66, 0xa3], RXQ + 0x1002);
    mov_mem(&mut lp, B + 0x50, 0);
    // Wait for the next RX packet.
    wait_used(&mut lp, RXQ, 0xf0, true);
    lp.extend_from_slice(&[0x89, 0xf3]); // mov ebx, esi
    lp.extend_from_slice(&[0x83, 0xe3, 0x0f]); // and ebx, 15
    lp.extend_from_slice(&[0xc1, 0xe3, 0x0c]); // shl ebx, 12
    lp.push(0x81);
    lp.push(0xc3);
    lp.extend_from_slice(&RX_BUFS.to_le_bytes()); // add ebx, RX_BUFS
    lp.extend_from_slice(&[0x0f, 0xb7, 0x43, 0x1e]); // movzx eax, word [ebx+30] (op)
    lp.extend_from_slice(&[0x83, 0xf8, 0x05]); // cmp eax, RW
    let jne_at = lp.len();
    lp.extend_from_slice(&[0x75, 0x00]); // jne repost (patched)
    lp.extend_from_slice(&[0x8b, 0x43, 0x18]); // mov eax, [ebx+24] (len)
    op_abs(&mut lp, &[0xa3], HDR + 24); // mov [HDR.len], eax
    op_abs(&mut lp, &[0x01, 0x05], FWD); // add [fwd_cnt], eax
    op_abs(&mut lp, &[0xa3], TXQ + 16 + 8); // desc 1 len = eax
    lp.extend_from_slice(&[0x8d, 0x4b, 0x2c]); // lea ecx, [ebx+44]
    op_abs(&mut lp, &[0x89, 0x0d], TXQ + 16); // desc 1 addr = ecx
    lp.extend_from_slice(&[0x89, 0xf8]); // mov eax, edi
    lp.extend_from_slice(&[0x83, 0xe0, 0x0f]); // and eax, 15
    lp.extend_from_slice(&[0x66, 0xc7, 0x04, 0x45]); // mov word [TX ring + eax*2], 0
    lp.extend_from_slice(&(TXQ + 0x1004).to_le_bytes());
    lp.extend_from_slice(&[0x00, 0x00]);
    lp.push(0x47); // inc edi
    op_abs(&mut lp, &[0x66, 0x89, 0x3d], TXQ + 0x1002); // mov [TX avail idx], di
    mov_mem(&mut lp, B + 0x50, 1); // notify TX
    wait_used(&mut lp, TXQ, 0xf8, false); // until TX used == di
    lp.extend_from_slice(&[0xe9, 0, 0, 0, 0]); // jmp repost (displacement set below)
                                               // `jne repost` is too far for rel8: the near form (6 bytes) replaces the placeholder.
    let rel32 = -(i32::try_from(jne_at).unwrap_or(0) + 6);
    let mut fixed = lp[..jne_at].to_vec();
    fixed.extend_from_slice(&[0x0f, 0x85]);
    fixed.extend_from_slice(&rel32.to_le_bytes());
    // The final `jmp repost` moves 4 bytes further from its target.
    let mut tail = lp[jne_at + 2..].to_vec();
    let n = tail.len();
    let back = -(i32::try_from(fixed.len() + n).unwrap_or(0));
    tail[n - 4..].copy_from_slice(&back.to_le_bytes());
    fixed.extend_from_slice(&tail);
    c.extend_from_slice(&fixed);
    c
}
