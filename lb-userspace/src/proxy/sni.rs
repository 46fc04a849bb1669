//! The server name of a TLS ClientHello, read from the first bytes of a
//! connection without terminating TLS (TLSRoute passthrough). Pure.

#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed (at most the first record: 5 + 16384 bytes).
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
    /// A ClientHello, with the server name it carries (None: no SNI).
    Hello(Option<String>),
}

/// The largest first record read (a ClientHello fits in one record).
pub const MAX_HELLO: usize = 5 + 16 * 1024;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

/// Reads the ClientHello in `buf` (the connection's first bytes).
pub fn peek(buf: &[u8]) -> Peek {
    if buf.len() < 5 {
        return if buf.first().is_some_and(|b| *b != 22) {
            Peek::NotTls
        } else {
            Peek::Incomplete
        };
    }
    // A handshake record (22) of TLS 1.0-1.3 framing.
    if buf[0] != 22 || buf[1] != 3 {
        return Peek::NotTls;
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len == 0 || len > 16 * 1024 {
        return Peek::NotTls;
    }
    if buf.len() < 5 + len {
        return Peek::Incomplete;
    }
    match hello(&buf[5..5 + len]) {
        Some(name) => Peek::Hello(name),
        None => Peek::NotTls,
    }
}

/// The server name of a ClientHello handshake message (None inside: no SNI;
/// None outside: malformed, or the hello spans records, which is refused).
fn hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { buf: body, pos: 0 };
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut r = Reader {
        buf: r.take(len)?,
        pos: 0,
    };
    r.take(2 + 32)?; // legacy version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.pos == r.buf.len() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut ext = Reader {
        buf: r.take(ext_len)?,
        pos: 0,
    };
    while ext.pos < ext.buf.len() {
        let kind = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut sn = Reader { buf: data, pos: 0 };
        let list = sn.u16()?;
        let mut names = Reader {
            buf: sn.take(list)?,
            pos: 0,
        };
        while names.pos < names.buf.len() {
            let name_type = names.u8()?;
            let len = names.u16()?;
            let name = names.take(len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = client_hello("ABC.example.com");
        assert_eq!(peek(&hello), Peek::Hello(Some("abc.example.com".into())));
        // Every prefix is incomplete, never misread.
        for n in 0..hello.len() {
            assert_eq!(peek(&hello[..n]), Peek::Incomplete, "{n} bytes");
        }
    }

    #[test]
    fn other_protocols_and_garbage_are_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(peek(b"G"), Peek::NotTls);
        assert_eq!(peek(&[22, 3, 1, 0, 5, 2, 0, 0, 1, 0]), Peek::NotTls);
        let mut hello = client_hello("a.example");
        hello[6] ^= 0xff; // a bogus handshake length
        assert_eq!(peek(&hello), Peek::NotTls);
    }
}
