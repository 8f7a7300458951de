//! Big-endian fields read off TLS handshake bytes: REALITY's ClientHello parsing and the TLS
//! 1.3 client's reading of the server's messages. Each caller maps `Truncated` into its own
//! error.

/// A field ran past the end of the bytes.
pub(crate) struct Truncated;

/// The bytes not read yet.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl<'a> Fields<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.0.len() < n {
            return Err(Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u24(&mut self) -> Result<usize, Truncated> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    pub(crate) fn vec8(&mut self) -> Result<Fields<'a>, Truncated> {
        let n = usize::from(self.u8()?);
        Ok(Fields(self.take(n)?))
    }
    pub(crate) fn vec16(&mut self) -> Result<Fields<'a>, Truncated> {
        let n = usize::from(self.u16()?);
        Ok(Fields(self.take(n)?))
    }
    pub(crate) fn vec24(&mut self) -> Result<Fields<'a>, Truncated> {
        let n = self.u24()?;
        Ok(Fields(self.take(n)?))
    }
}
