//! XTLS Vision (`flow: "xtls-rprx-vision"`): the padding blocks that hide the lengths of an
//! inner TLS handshake, the filter that recognises that handshake, and the decisions of when
//! padding ends and when both ends drop the outer TLS ("direct"); no IO.
//!
//! A block is `[command u8][content length u16][padding length u16][content][padding]`, the
//! first one of each direction prefixed by the user's 16-byte UUID. Command 0 says more blocks
//! follow, 1 that padding ends (the rest of the direction is plain bytes inside the outer
//! TLS), 2 that padding ends and the sender drops the outer TLS after this block (the rest
//! is raw TCP). The sender chooses 2 only when the filter saw an inner TLS 1.3 handshake
//! (not `TLS_AES_128_CCM_8_SHA256`) and the block carries complete application-data records.

/// A block's command: more blocks follow.
pub const CONTINUE: u8 = 0;
/// A block's command: padding ends; plain bytes follow in the outer TLS.
pub const END: u8 = 1;
/// A block's command: padding ends; raw TCP follows the block.
pub const DIRECT: u8 = 2;

/// The flow name a VLESS header carries for Vision.
pub const FLOW: &str = "xtls-rprx-vision";

/// Bytes of a block header (command and the two lengths).
const HEADER_LEN: usize = 5;
/// Xray's buffers are 8 KiB; a block (UUID and header included) fits one.
const BLOCK_MAX: usize = 8192;
/// The most content one block carries, so that a block fits `BLOCK_MAX` (21: UUID + header).
pub const MAX_CONTENT: usize = BLOCK_MAX - 21;
/// Packets (reads and writes, both directions together) the filter looks at, as Xray counts.
const PACKETS_TO_FILTER: u8 = 8;

const TLS13_SUPPORTED_VERSIONS: [u8; 6] = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
const TLS_APPLICATION_DATA: [u8; 3] = [0x17, 0x03, 0x03];
/// TLS_AES_128_CCM_8_SHA256: its short tag makes records of a recognisable length; Xray
/// never goes direct with it.
#[cfg(test)]
const CCM_8: u16 = 0x1305;

// === the filter ===

/// What the first packets of a session show about the traffic inside it (one per session,
/// shared by both directions, as Xray's `TrafficState`).
#[derive(Debug, Clone)]
pub struct TlsFilter {
    packets_left: u8,
    /// A ClientHello or ServerHello went by.
    pub is_tls: bool,
    /// A ServerHello went by (TLS 1.2 or later).
    pub tls12_or_above: bool,
    /// The ServerHello chose TLS 1.3 with a cipher suite that may go direct.
    pub direct_allowed: bool,
    cipher: u16,
    /// Bytes of the ServerHello record not seen yet; negative when none is being read.
    remaining_server_hello: i32,
}

impl Default for TlsFilter {
    fn default() -> Self {
        TlsFilter {
            packets_left: PACKETS_TO_FILTER,
            is_tls: false,
            tls12_or_above: false,
            direct_allowed: false,
            cipher: 0,
            remaining_server_hello: -1,
        }
    }
}

impl TlsFilter {
    /// Whether packets are still looked at.
    pub fn filtering(&self) -> bool {
        self.packets_left > 0
    }

    /// Looks at one packet (a read or a write, unpadded) while filtering.
    pub fn observe(&mut self, b: &[u8]) {
        // An empty write (the first block that carries no payload) is no packet, as in Xray.
        if self.packets_left == 0 || b.is_empty() {
            return;
        }
        self.packets_left -= 1;
        if b.len() >= 6 {
            if b[..3] == [0x16, 0x03, 0x03] && b[5] == 0x02 {
                // ServerHello: its record's length, and the cipher suite after the session id.
                self.remaining_server_hello = (i32::from(b[3]) << 8 | i32::from(b[4])) + 5;
                self.tls12_or_above = true;
                self.is_tls = true;
                if b.len() >= 79 && self.remaining_server_hello >= 79 {
                    let at = 44 + usize::from(b[43]);
                    if let Some(c) = b.get(at..at + 2) {
                        self.cipher = u16::from_be_bytes([c[0], c[1]]);
                    }
                }
            } else if b[..2] == [0x16, 0x03] && b[5] == 0x01 {
                self.is_tls = true;
            }
        }
        if self.remaining_server_hello > 0 {
            let end = (self.remaining_server_hello as usize).min(b.len());
            self.remaining_server_hello -= b.len().min(i32::MAX as usize) as i32;
            if b[..end].windows(6).any(|w| w == TLS13_SUPPORTED_VERSIONS) {
                // TLS 1.3 (a suite Xray knows: 0x1301..=0x1305), and not CCM_8.
                self.direct_allowed = (0x1301..=0x1304).contains(&self.cipher);
                self.packets_left = 0;
            } else if self.remaining_server_hello <= 0 {
                // TLS 1.2: padding goes on, but never direct.
                self.packets_left = 0;
            }
        }
    }
}

/// Whether `b` is one or more complete TLS application-data records and nothing else.
pub fn is_complete_records(mut b: &[u8]) -> bool {
    if b.is_empty() {
        return false;
    }
    while !b.is_empty() {
        if b.len() < 5 || b[..3] != TLS_APPLICATION_DATA {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        if len == 0 || b.len() - 5 < len {
            return false;
        }
        b = &b[5 + len..];
    }
    true
}

/// Padding bytes for a block of `content` bytes, as Xray chooses them (its default seed
/// 900/500/900/256): a short block while the handshake goes by gets 900 to 1399 bytes in
/// all, anything else up to 255 bytes; a block never exceeds 8 KiB. `below(n)` is a uniform
/// random number in `0..n`.
pub fn padding_len(content: usize, long: bool, below: &mut dyn FnMut(u32) -> u32) -> usize {
    let len = if content < 900 && long { below(500) as usize + 900 - content } else { below(256) as usize };
    len.min(MAX_CONTENT.saturating_sub(content))
}

// === the writer's side ===

/// Appends one block to `out`: the UUID first if `uuid` still holds it (it is taken), then
/// the header, the content and `padding` zero bytes. `content` is at most `MAX_CONTENT`.
pub fn encode_block(uuid: &mut Option<[u8; 16]>, command: u8, content: &[u8], padding: usize, out: &mut Vec<u8>) {
    debug_assert!(content.len() <= MAX_CONTENT && padding <= MAX_CONTENT);
    if let Some(id) = uuid.take() {
        out.extend_from_slice(&id);
    }
    out.push(command);
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&(padding as u16).to_be_bytes());
    out.extend_from_slice(content);
    out.resize(out.len() + padding, 0);
}

/// One direction's sender: pads writes until the handshake inside is over.
#[derive(Debug, Clone)]
pub struct Padder {
    uuid: Option<[u8; 16]>,
    padding: bool,
}

/// What the sender must do after writing what `Padder::encode` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep writing through `encode` (padded or not, it decides).
    Same,
    /// Padding is over: later writes go as they are, inside the outer TLS.
    Plain,
    /// The block with the direct command went out: later writes go raw, outside the outer TLS.
    Direct,
}

impl Padder {
    /// A sender for the user `uuid`, whose first block carries the UUID.
    pub fn new(uuid: [u8; 16]) -> Self {
        Padder { uuid: Some(uuid), padding: true }
    }

    /// Whether writes are still padded.
    pub fn padding(&self) -> bool {
        self.padding
    }

    /// Encodes one write of `data` into `out` (padded blocks, perhaps followed by plain bytes),
    /// looking at it with `filter` first, as Xray's Vision writer does. An empty `data` makes
    /// one long-padded empty block (a client's first write without payload).
    pub fn encode(
        &mut self,
        data: &[u8],
        filter: &mut TlsFilter,
        below: &mut dyn FnMut(u32) -> u32,
        out: &mut Vec<u8>,
    ) -> After {
        filter.observe(data);
        if !self.padding {
            out.extend_from_slice(data);
            return After::Plain;
        }
        if data.is_empty() {
            let pad = padding_len(0, true, below);
            encode_block(&mut self.uuid, CONTINUE, &[], pad, out);
            return After::Same;
        }
        let complete = is_complete_records(data);
        let pieces = split_pieces(data);
        let n = pieces.len();
        let mut long = filter.is_tls;
        let mut after = After::Same;
        let mut done = 0;
        for (i, piece) in pieces.into_iter().enumerate() {
            done += piece.len();
            let last = i + 1 == n;
            let final_cmd = if filter.direct_allowed { DIRECT } else { END };
            if filter.is_tls && piece.len() >= 6 && piece[..3] == TLS_APPLICATION_DATA && complete {
                let command = if last { final_cmd } else { CONTINUE };
                let pad = padding_len(piece.len(), true, below);
                encode_block(&mut self.uuid, command, piece, pad, out);
                self.padding = false;
                long = false;
                after = if filter.direct_allowed { After::Direct } else { After::Plain };
                continue;
            }
            if !filter.tls12_or_above && filter.packets_left <= 1 {
                // Not TLS (or older): padding ends one packet early, as Xray's sender does
                // for older receivers; what is left of this write follows unpadded.
                self.padding = false;
                let pad = padding_len(piece.len(), long, below);
                encode_block(&mut self.uuid, END, piece, pad, out);
                out.extend_from_slice(&data[done..]);
                return After::Plain;
            }
            let command = if last && !self.padding { final_cmd } else { CONTINUE };
            let pad = padding_len(piece.len(), long, below);
            encode_block(&mut self.uuid, command, piece, pad, out);
        }
        after
    }
}

/// Splits one write into block-sized pieces: at the last application-data record header of
/// an oversized stretch when there is one (as Xray reshapes its buffers), else at
/// `MAX_CONTENT`.
fn split_pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(data.len() / MAX_CONTENT + 1);
    let mut rest = data;
    while rest.len() > MAX_CONTENT {
        let window = &rest[..MAX_CONTENT];
        let cut =
            window.windows(3).rposition(|w| w == TLS_APPLICATION_DATA).filter(|&at| at >= 21).unwrap_or(MAX_CONTENT);
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

// === the reader's side ===

/// What the receiver's input is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Padded blocks.
    Padded,
    /// Plain bytes inside the outer TLS (padding ended, or the peer never padded).
    Plain,
    /// The direct block has ended: what follows comes raw, outside the outer TLS (bytes
    /// already decoded from the outer TLS come first).
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the UUID that opens the first block: `n` bytes matched so far.
    Uuid(u8),
    /// The input was not padded after all: handing on the UUID bytes `from..to` it matched.
    Replay {
        from: u8,
        to: u8,
    },
    /// Reading a block header: `n` of its 5 bytes read.
    Header(u8),
    Content,
    Padding,
    Done,
}

/// One direction's receiver: strips padding from any split of its input.
#[derive(Debug, Clone)]
pub struct Unpadder {
    uuid: [u8; 16],
    state: State,
    header: [u8; HEADER_LEN],
    content_left: usize,
    padding_left: usize,
    mode: Mode,
}

impl Unpadder {
    /// A receiver expecting blocks from the user `uuid`.
    pub fn new(uuid: [u8; 16]) -> Self {
        Unpadder {
            uuid,
            state: State::Uuid(0),
            header: [0; HEADER_LEN],
            content_left: 0,
            padding_left: 0,
            mode: Mode::Padded,
        }
    }

    /// What the input is now: once `Plain` or `Direct`, `decode` copies its input as it is.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Decodes from `input` into `out`: returns (bytes consumed, bytes written). Stops when
    /// `input` is used up or `out` is full, and right after the block that ends padding, so
    /// that the caller sees the mode change before the bytes after it. Input that does not
    /// open with the UUID was never padded (Xray's receiver passes it on as it is).
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        let (mut i, mut o) = (0, 0);
        while i < input.len() {
            match self.state {
                State::Done => {
                    let n = (input.len() - i).min(out.len() - o);
                    out[o..o + n].copy_from_slice(&input[i..i + n]);
                    return (i + n, o + n);
                }
                State::Uuid(matched) => {
                    let m = usize::from(matched);
                    let n = (16 - m).min(input.len() - i);
                    if input[i..i + n] != self.uuid[m..m + n] {
                        // Not padded: hand on what matched so far, then everything as it is.
                        self.state = State::Replay { from: 0, to: m as u8 };
                        self.mode = Mode::Plain;
                        continue;
                    }
                    i += n;
                    self.state = if m + n == 16 { State::Header(0) } else { State::Uuid((m + n) as u8) };
                }
                State::Replay { from, to } => {
                    let (f, t) = (usize::from(from), usize::from(to));
                    let n = (t - f).min(out.len() - o);
                    out[o..o + n].copy_from_slice(&self.uuid[f..f + n]);
                    o += n;
                    if f + n < t {
                        self.state = State::Replay { from: (f + n) as u8, to };
                        return (i, o);
                    }
                    self.state = State::Done;
                }
                State::Header(have) => {
                    let h = usize::from(have);
                    let n = (HEADER_LEN - h).min(input.len() - i);
                    self.header[h..h + n].copy_from_slice(&input[i..i + n]);
                    i += n;
                    if h + n < HEADER_LEN {
                        self.state = State::Header((h + n) as u8);
                        continue;
                    }
                    self.content_left = usize::from(u16::from_be_bytes([self.header[1], self.header[2]]));
                    self.padding_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    self.state = State::Content;
                }
                State::Content => {
                    let n = self.content_left.min(input.len() - i).min(out.len() - o);
                    if n == 0 && self.content_left > 0 {
                        return (i, o);
                    }
                    out[o..o + n].copy_from_slice(&input[i..i + n]);
                    (i, o) = (i + n, o + n);
                    self.content_left -= n;
                }
                State::Padding => {
                    let n = self.padding_left.min(input.len() - i);
                    i += n;
                    self.padding_left -= n;
                }
            }
            if self.settle() {
                return (i, o);
            }
        }
        (i, o)
    }

    /// Moves past the parts of a block that are used up; `true` when the block that ends
    /// padding just ended.
    fn settle(&mut self) -> bool {
        if self.state == State::Content && self.content_left == 0 {
            self.state = State::Padding;
        }
        if self.state != State::Padding || self.padding_left > 0 {
            return false;
        }
        match self.header[0] {
            CONTINUE => {
                self.state = State::Header(0);
                false
            }
            command => {
                self.state = State::Done;
                self.mode = if command == DIRECT { Mode::Direct } else { Mode::Plain };
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
