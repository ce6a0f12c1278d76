//! The little of RESP2 the rate limiter's own Redis connection speaks: commands are arrays
//! of bulk strings; replies are read incrementally, integers arrays kept, anything else
//! skipped (or an error's text kept).

use std::ops::Range;

/// A reply larger than this, complete or not, is a broken or hostile peer, not a script's
/// numbers: the largest real one ([`MAX_ELEMENTS`] integers of at most 24 bytes each) is
/// smaller. Checked on what is buffered, so an incomplete reply cannot grow the buffer
/// beyond it either.
pub const MAX_REPLY: usize = 1 << 20;

/// Elements of one array, at most. Checked on the header before any element is read (and
/// nothing is ever reserved from a header's count), so `*1000000000` costs nothing. A
/// script call decides at most `MAX_BATCH` (64) requests of a few counters, 4 integers
/// each: 32,768 leaves room for 128 counters per request.
pub const MAX_ELEMENTS: i64 = 1 << 15;

/// Nesting deeper than this is not a reply to anything we send.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An array of integers (the script's numbers), written into the caller's vector.
    Ints,
    /// `-…`: the error text's bytes within the buffer.
    Error(Range<usize>),
    /// Anything else (`+OK`, a bulk string, nil, an array of other things).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Redis reply")]
pub struct ProtocolError;

/// Appends `*n\r\n`, the head of a command of `n` arguments.
pub fn put_array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument as a bulk string.
pub fn put_bulk(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends a whole command of a few arguments.
pub fn put_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    put_array(out, args.len());
    for arg in args {
        put_bulk(out, arg);
    }
}

/// Reads one reply from the start of `buf`: `Ok(None)` when it is not all there yet,
/// otherwise the reply and the bytes it took. An array of integers is written to `ints`
/// (cleared first); `ints` is left unspecified for other replies.
///
/// Bounded whatever the peer sends: an array header above [`MAX_ELEMENTS`], nesting deeper
/// than [`MAX_DEPTH`] and an incomplete reply already larger than [`MAX_REPLY`] are errors,
/// so the caller never buffers more than that for one reply.
pub fn parse(buf: &[u8], ints: &mut Vec<i64>) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let parsed = parse_bounded(buf, ints)?;
    if parsed.is_none() && buf.len() > MAX_REPLY {
        return Err(ProtocolError);
    }
    Ok(parsed)
}

fn parse_bounded(buf: &[u8], ints: &mut Vec<i64>) -> Result<Option<(Reply, usize)>, ProtocolError> {
    ints.clear();
    let Some((head, next)) = line(buf, 0)? else {
        return Ok(None);
    };
    let (kind, rest) = match head.split_first() {
        Some((&k, rest)) => (k, rest),
        None => return Err(ProtocolError),
    };
    match kind {
        b'-' => Ok(Some((Reply::Error(1..head.len()), next))),
        b'*' => {
            let n = array_len(rest)?;
            if n == -1 {
                return Ok(Some((Reply::Other, next)));
            }
            let mut at = next;
            let mut all_ints = true;
            for _ in 0..n {
                if all_ints {
                    if let Some((l, after)) = line(buf, at)? {
                        if let Some((b':', digits)) = l.split_first() {
                            ints.push(number(digits)?);
                            at = after;
                            continue;
                        }
                    } else {
                        return Ok(None);
                    }
                    all_ints = false;
                }
                match skip(buf, at, 1)? {
                    Some(after) => at = after,
                    None => return Ok(None),
                }
            }
            Ok(Some((
                if all_ints { Reply::Ints } else { Reply::Other },
                at,
            )))
        }
        _ => Ok(skip(buf, 0, 0)?.map(|end| (Reply::Other, end))),
    }
}

/// The end of the value that starts at `at`, `None` when incomplete.
fn skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError);
    }
    let Some((head, next)) = line(buf, at)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = head.split_first() else {
        return Err(ProtocolError);
    };
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => number(rest).map(|_| Some(next)),
        b'$' => {
            let n = number(rest)?;
            if n < 0 {
                return if n == -1 {
                    Ok(Some(next))
                } else {
                    Err(ProtocolError)
                };
            }
            let n = usize::try_from(n).map_err(|_| ProtocolError)?;
            if n > MAX_REPLY {
                return Err(ProtocolError);
            }
            let end = next + n;
            match buf.get(end..end + 2) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some(end + 2)),
                Some(_) => Err(ProtocolError),
            }
        }
        b'*' => {
            let n = array_len(rest)?;
            let mut at = next;
            for _ in 0..n.max(0) {
                match skip(buf, at, depth + 1)? {
                    Some(after) => at = after,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(ProtocolError),
    }
}

/// The line starting at `at` without its `\r\n`, and where the next one starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    match rest.iter().position(|&b| b == b'\n') {
        Some(0) => Err(ProtocolError),
        Some(i) if rest[i - 1] == b'\r' => Ok(Some((&rest[..i - 1], at + i + 1))),
        Some(_) => Err(ProtocolError),
        None if rest.len() > MAX_REPLY => Err(ProtocolError),
        None => Ok(None),
    }
}

/// An array header's count: -1 (nil) up to [`MAX_ELEMENTS`].
fn array_len(digits: &[u8]) -> Result<i64, ProtocolError> {
    let n = number(digits)?;
    if (-1..=MAX_ELEMENTS).contains(&n) {
        Ok(n)
    } else {
        Err(ProtocolError)
    }
}

fn number(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(buf: &[u8]) -> Result<Option<(Reply, usize, Vec<i64>)>, ProtocolError> {
        let mut ints = Vec::new();
        Ok(parse(buf, &mut ints)?.map(|(r, n)| (r, n, ints)))
    }

    #[test]
    fn integer_arrays_are_read_whole_and_only_when_complete() {
        let reply = b"*4\r\n:1\r\n:-5\r\n:0\r\n:9007199254740993\r\n";
        let (r, n, ints) = one(reply).unwrap().unwrap();
        assert_eq!(r, Reply::Ints);
        assert_eq!(n, reply.len());
        assert_eq!(ints, [1, -5, 0, 9_007_199_254_740_993]);
        for cut in 0..reply.len() {
            assert_eq!(one(&reply[..cut]).unwrap(), None, "cut at {cut}");
        }
        // Followed by the next reply: only the first is taken.
        let mut two = reply.to_vec();
        two.extend_from_slice(b"*0\r\n");
        let (_, n, _) = one(&two).unwrap().unwrap();
        assert_eq!(n, reply.len());
        assert_eq!(one(b"*0\r\n").unwrap().unwrap(), (Reply::Ints, 4, vec![]));
    }

    #[test]
    fn errors_and_other_replies() {
        let (r, n, _) = one(b"-NOSCRIPT No matching script\r\n").unwrap().unwrap();
        assert_eq!(n, 30);
        let Reply::Error(range) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            &b"-NOSCRIPT No matching script"[range],
            b"NOSCRIPT No matching script"
        );
        for (buf, len) in [
            (&b"+OK\r\n"[..], 5),
            (b"$40\r\n0123456789012345678901234567890123456789\r\n", 47),
            (b"$-1\r\n", 5),
            (b"*-1\r\n", 5),
            (b"*3\r\n:1\r\n$2\r\nab\r\n*1\r\n+x\r\n", 24),
            (b":7\r\n", 4),
        ] {
            let (r, n, _) = one(buf).unwrap().unwrap();
            assert_eq!(
                (r, n),
                (Reply::Other, len),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            for cut in 0..buf.len() {
                assert_eq!(one(&buf[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn hostile_replies_are_errors_not_panics_or_unbounded_waits() {
        for buf in [
            &b"\r\n"[..],
            b"\n",
            b"?what\r\n",
            b"*x\r\n",
            b"*2\r\n:1\r\n:\xff\r\n",
            b"*1\r\n:1\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999999999999\r\n",
            b"$20000000\r\n",
            b"$1048577\r\n",
            b"*-7\r\n+x\r\n*1\r\n*-2\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(
                one(buf).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(buf)
            );
        }
        // A line that never ends: refused once it is larger than any reply can be.
        let long = vec![b'+'; MAX_REPLY + 2];
        assert!(one(&long).is_err());
        assert_eq!(one(&long[..1000]).unwrap(), None);
    }

    /// A header claiming 10^9 elements (or one more than the limit) is refused on the
    /// header alone: nothing is reserved from it and no element is waited for.
    #[test]
    fn huge_array_headers_are_refused_before_any_element() {
        let mut ints = Vec::new();
        for header in [
            &b"*1000000000\r\n"[..],
            b"*1000000000\r\n:1\r\n:1\r\n",
            b"*9223372036854775807\r\n",
            b"*32769\r\n",
            b"*1\r\n*1000000000\r\n",
            b"*2\r\n$1\r\na\r\n*32769\r\n",
        ] {
            assert!(
                parse(header, &mut ints).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(header)
            );
            assert!(ints.capacity() < 1024, "{}", ints.capacity());
        }
        // The largest array allowed still waits for its elements.
        assert_eq!(one(b"*32768\r\n:1\r\n").unwrap(), None);
    }

    /// Elements within every limit that never end the reply: refused once the buffered
    /// part is larger than any reply can be, so the caller's buffer stays bounded.
    #[test]
    fn an_endless_reply_is_refused_past_max_reply() {
        let element = b"$40\r\n0123456789012345678901234567890123456789\r\n";
        let mut nested = b"*1\r\n*32768\r\n".to_vec();
        let mut flat = b"*32768\r\n".to_vec();
        while flat.len() <= MAX_REPLY {
            nested.extend_from_slice(element);
            flat.extend_from_slice(element);
        }
        for buf in [&nested, &flat] {
            assert_eq!(one(&buf[..MAX_REPLY - 64]).unwrap(), None);
            assert!(one(buf).is_err());
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        put_array(&mut out, 2);
        put_bulk(&mut out, b"GET");
        put_bulk(&mut out, b"a\r\nb");
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n");
        let mut same = Vec::new();
        put_command(&mut same, &[b"GET", b"a\r\nb"]);
        assert_eq!(same, out);
    }

    /// Random bytes, and valid replies with random bytes flipped, cut or spliced: never a
    /// panic, and a complete reply never claims more bytes than there are.
    #[test]
    fn random_and_mangled_replies_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: [&[u8]; 4] = [
            b"*4\r\n:1\r\n:-5\r\n:0\r\n:12\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b"*3\r\n:1\r\n$2\r\nab\r\n*1\r\n+x\r\n",
            b"$5\r\nhello\r\n",
        ];
        let alphabet = b"*$:+-\r\n0123456789-x";
        let mut ints = Vec::new();
        for round in 0..200_000u64 {
            let mut buf: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 40) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                valid[(next() % 4) as usize].to_vec()
            };
            for _ in 0..(next() % 3) {
                if buf.is_empty() {
                    break;
                }
                let at = (next() % buf.len() as u64) as usize;
                match next() % 3 {
                    0 => buf[at] = (next() & 0xff) as u8,
                    1 => buf.truncate(at),
                    _ => {
                        let other = valid[(next() % 4) as usize];
                        buf.splice(at..at, other.iter().copied());
                    }
                }
            }
            if let Ok(Some((_, len))) = parse(&buf, &mut ints) {
                assert!(len <= buf.len(), "{:?}", String::from_utf8_lossy(&buf));
            }
        }
    }
}
