//! RFC 2136 dynamic update, signed with TSIG (RFC 8945, HMAC-SHA256): "replace the address
//! records of NAME with this one", sent to the zone's primary server over UDP. The server's
//! answer must carry our ID and a signature made with the same key over our request's MAC,
//! or it is not believed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5;
/// Seconds of clock difference the server may allow (RFC 8945 recommends 300).
const FUDGE: u16 = 300;
const ALGORITHM: &str = "hmac-sha256";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UpdateError {
    #[error("a name is not valid in DNS: {0}")]
    BadName(String),
    #[error("the DNS server refused the update: {0}")]
    Refused(&'static str),
    /// Said by an answer that could not be verified (a server rejecting our key answers
    /// unsigned): believed only if no signed answer comes.
    #[error("the DNS server did not accept {0}")]
    KeyRejected(&'static str),
    #[error("the DNS server's answer is malformed")]
    Malformed,
    #[error("the DNS server's answer is not signed with our key")]
    Unsigned,
}

/// The key's name and secret.
pub struct TsigKey<'a> {
    pub name: &'a str,
    pub secret: &'a [u8],
}

/// A signed update message and the MAC the answer's signature covers.
pub struct SignedUpdate {
    pub message: Vec<u8>,
    pub id: u16,
    mac: Vec<u8>,
}

/// Replace NAME's A (or AAAA) records in ZONE by one record for `address`.
pub fn build(
    zone: &str,
    name: &str,
    address: IpAddr,
    ttl: Duration,
    key: &TsigKey<'_>,
    id: u16,
    now: SystemTime,
) -> Result<SignedUpdate, UpdateError> {
    let (rtype, rdata) = match address {
        IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
        IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
    };
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(OPCODE_UPDATE << 11).to_be_bytes());
    // One zone, no prerequisites, two updates, no additional (TSIG comes after signing).
    for count in [1u16, 0, 2, 0] {
        m.extend_from_slice(&count.to_be_bytes());
    }
    put_name(&mut m, zone)?;
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    // Delete the RRset of this type (class ANY, TTL 0, no data), then add ours.
    put_name(&mut m, name)?;
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&CLASS_ANY.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    put_name(&mut m, name)?;
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m.extend_from_slice(&(ttl.as_secs().min(u32::MAX as u64) as u32).to_be_bytes());
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);

    let time_signed = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut mac = hmac(key.secret);
    mac.update(&m);
    mac.update(&tsig_variables(key.name, time_signed)?);
    let mac = mac.finalize().into_bytes().to_vec();
    append_tsig(&mut m, key.name, time_signed, &mac, id)?;
    Ok(SignedUpdate {
        message: m,
        id,
        mac,
    })
}

/// Check the server's answer to `request`: ours, signed with our key, and NOERROR.
pub fn check_answer(
    request: &SignedUpdate,
    answer: &[u8],
    key: &TsigKey<'_>,
) -> Result<(), UpdateError> {
    if answer.len() < 12 || answer[..2] != request.id.to_be_bytes() {
        return Err(UpdateError::Malformed);
    }
    let flags = u16::from_be_bytes([answer[2], answer[3]]);
    let is_answer = flags & 0x8000 != 0;
    if !is_answer || (flags >> 11) & 0xf != OPCODE_UPDATE {
        return Err(UpdateError::Malformed);
    }
    let tsig = find_tsig(answer).ok_or(UpdateError::Unsigned)?;
    let rcode = flags & 0xf;
    // A bad signature or time is answered unsigned with the TSIG error set.
    if tsig.error != 0 {
        return Err(UpdateError::KeyRejected(match tsig.error {
            16 => "our key's signature (BADSIG: wrong key_secret?)",
            17 => "our key (BADKEY: wrong key_name or key_algorithm?)",
            18 => "our time (BADTIME: is the clock right?)",
            _ => "our signature",
        }));
    }
    // The answer's MAC covers our MAC, the answer without its TSIG (ARCOUNT one less), and
    // its TSIG variables.
    let mut unsigned = answer[..tsig.start].to_vec();
    let arcount = u16::from_be_bytes([unsigned[10], unsigned[11]]).saturating_sub(1);
    unsigned[10..12].copy_from_slice(&arcount.to_be_bytes());
    unsigned[..2].copy_from_slice(&tsig.original_id.to_be_bytes());
    let mut mac = hmac(key.secret);
    mac.update(&(request.mac.len() as u16).to_be_bytes());
    mac.update(&request.mac);
    mac.update(&unsigned);
    mac.update(&tsig_variables_at(
        key.name,
        tsig.time_signed,
        tsig.fudge,
        tsig.error,
        &tsig.other,
    )?);
    mac.verify_slice(&tsig.mac)
        .map_err(|_| UpdateError::Unsigned)?;
    match rcode {
        0 => Ok(()),
        5 => Err(UpdateError::Refused(
            "REFUSED: the key may not update this name",
        )),
        9 => Err(UpdateError::Refused(
            "NOTAUTH: the server is not the zone's primary",
        )),
        10 => Err(UpdateError::Refused("NOTZONE: the name is not in the zone")),
        2 => Err(UpdateError::Refused("SERVFAIL")),
        _ => Err(UpdateError::Refused("an error code")),
    }
}

fn hmac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length")
}

fn tsig_variables(key_name: &str, time_signed: u64) -> Result<Vec<u8>, UpdateError> {
    tsig_variables_at(key_name, time_signed, FUDGE, 0, &[])
}

/// Key name, class, TTL, algorithm, time, fudge, error and other data, as the MAC covers them.
fn tsig_variables_at(
    key_name: &str,
    time_signed: u64,
    fudge: u16,
    error: u16,
    other: &[u8],
) -> Result<Vec<u8>, UpdateError> {
    let mut v = Vec::new();
    put_name(&mut v, key_name)?;
    v.extend_from_slice(&CLASS_ANY.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    put_name(&mut v, ALGORITHM)?;
    v.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    v.extend_from_slice(&fudge.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(other.len() as u16).to_be_bytes());
    v.extend_from_slice(other);
    Ok(v)
}

fn append_tsig(
    m: &mut Vec<u8>,
    key_name: &str,
    time_signed: u64,
    mac: &[u8],
    original_id: u16,
) -> Result<(), UpdateError> {
    put_name(m, key_name)?;
    m.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    m.extend_from_slice(&CLASS_ANY.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    let mut rdata = Vec::new();
    put_name(&mut rdata, ALGORITHM)?;
    rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&original_id.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);
    let arcount = u16::from_be_bytes([m[10], m[11]]) + 1;
    m[10..12].copy_from_slice(&arcount.to_be_bytes());
    Ok(())
}

/// A name in wire form, lower case, uncompressed (as TSIG's MAC requires).
fn put_name(m: &mut Vec<u8>, name: &str) -> Result<(), UpdateError> {
    let name = name.trim_end_matches('.');
    for label in name.split('.').filter(|l| !l.is_empty()) {
        if label.len() > 63 || !label.is_ascii() {
            return Err(UpdateError::BadName(label.to_string()));
        }
        m.push(label.len() as u8);
        m.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    m.push(0);
    Ok(())
}

struct FoundTsig {
    /// Where the TSIG record starts.
    start: usize,
    time_signed: u64,
    fudge: u16,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    /// Other data (the server's time, with BADTIME).
    other: Vec<u8>,
}

/// The last additional record, if it is a TSIG.
fn find_tsig(m: &[u8]) -> Option<FoundTsig> {
    let count = |i: usize| u16::from_be_bytes([m[4 + 2 * i], m[5 + 2 * i]]) as usize;
    let (questions, records) = (count(0), count(1) + count(2) + count(3));
    if records == 0 {
        return None;
    }
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(m, at)? + 4;
    }
    let mut last = at;
    for _ in 0..records {
        last = at;
        at = skip_name(m, at)?;
        let rdlen = u16::from_be_bytes([*m.get(at + 8)?, *m.get(at + 9)?]) as usize;
        at += 10 + rdlen;
        if at > m.len() {
            return None;
        }
    }
    let name_end = skip_name(m, last)?;
    if m.get(name_end..name_end + 2)? != TYPE_TSIG.to_be_bytes() {
        return None;
    }
    let rdata = m.get(name_end + 10..at)?;
    let algorithm_end = skip_name(rdata, 0)?;
    let r = rdata.get(algorithm_end..)?;
    let mut time = [0u8; 8];
    time[2..].copy_from_slice(r.get(..6)?);
    let fudge = u16::from_be_bytes([*r.get(6)?, *r.get(7)?]);
    let mac_len = u16::from_be_bytes([*r.get(8)?, *r.get(9)?]) as usize;
    let mac = r.get(10..10 + mac_len)?.to_vec();
    let rest = r.get(10 + mac_len..)?;
    let other_len = u16::from_be_bytes([*rest.get(4)?, *rest.get(5)?]) as usize;
    let other = rest.get(6..6 + other_len)?.to_vec();
    Some(FoundTsig {
        start: last,
        time_signed: u64::from_be_bytes(time),
        fudge,
        mac,
        original_id: u16::from_be_bytes([*rest.first()?, *rest.get(1)?]),
        error: u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]),
        other,
    })
}

/// The index just past a (possibly compressed) name.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)? as usize;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l => at += 1 + l,
        }
    }
}

/// Send the update and wait for a good answer (three tries, a few seconds each).
pub async fn send(
    server: SocketAddr,
    update: &SignedUpdate,
    key: &TsigKey<'_>,
) -> Result<(), super::DnsUpdateError> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    let mut buf = vec![0u8; 4096];
    // What an unverified answer said; a forged datagram must not end the attempt.
    let mut unverified = None;
    for _ in 0..3 {
        socket.send(&update.message).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let n = received?;
            match check_answer(update, &buf[..n], key) {
                Ok(()) => return Ok(()),
                Err(e @ (UpdateError::Refused(_) | UpdateError::BadName(_))) => {
                    return Err(e.into())
                }
                Err(UpdateError::Malformed) => {}
                Err(e) => unverified = Some(e),
            }
        }
    }
    Err(match unverified {
        Some(e) => e.into(),
        None => super::DnsUpdateError::NoAnswer(server),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: TsigKey<'static> = TsigKey {
        name: "hearth-ddns",
        secret: b"0123456789abcdef0123456789abcdef",
    };

    fn update() -> SignedUpdate {
        build(
            "home.test",
            "box.home.test",
            "203.0.114.1".parse().unwrap(),
            Duration::from_secs(60),
            &KEY,
            0x1234,
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap()
    }

    /// What a server would answer: the header with QR set and RCODE, then a TSIG signed
    /// over the request's MAC.
    fn answer_to(request: &SignedUpdate, rcode: u16, secret: &[u8]) -> Vec<u8> {
        let mut a = request.message[..12].to_vec();
        let flags = 0x8000 | (OPCODE_UPDATE << 11) | rcode;
        a[2..4].copy_from_slice(&flags.to_be_bytes());
        a[4..12].copy_from_slice(&[0; 8]);
        let time = 1_800_000_001;
        let mut mac = hmac(secret);
        mac.update(&(request.mac.len() as u16).to_be_bytes());
        mac.update(&request.mac);
        mac.update(&a);
        mac.update(&tsig_variables(KEY.name, time).unwrap());
        let mac = mac.finalize().into_bytes();
        append_tsig(&mut a, KEY.name, time, &mac, request.id).unwrap();
        a
    }

    #[test]
    fn the_update_replaces_the_address_record_and_is_signed() {
        let u = update();
        let m = &u.message;
        assert_eq!(&m[..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) >> 11, OPCODE_UPDATE);
        // ZOCOUNT 1, PRCOUNT 0, UPCOUNT 2, ARCOUNT 1 (the TSIG).
        assert_eq!(&m[4..12], &[0, 1, 0, 0, 0, 2, 0, 1]);
        let tsig = find_tsig(m).expect("a TSIG record at the end");
        assert_eq!(tsig.mac, u.mac);
        assert_eq!(tsig.mac.len(), 32);
        assert_eq!(tsig.original_id, 0x1234);
        assert!(m.windows(4).any(|w| w == [203, 0, 114, 1]));
        // The MAC covers the message: another address, another MAC.
        let other = build(
            "home.test",
            "box.home.test",
            "203.0.114.2".parse().unwrap(),
            Duration::from_secs(60),
            &KEY,
            0x1234,
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap();
        assert_ne!(other.mac, u.mac);
    }

    #[test]
    fn only_a_signed_noerror_answer_to_our_id_is_success() {
        let u = update();
        assert_eq!(
            check_answer(&u, &answer_to(&u, 0, KEY.secret), &KEY),
            Ok(())
        );
        assert!(matches!(
            check_answer(&u, &answer_to(&u, 5, KEY.secret), &KEY),
            Err(UpdateError::Refused(_))
        ));
        assert_eq!(
            check_answer(&u, &answer_to(&u, 0, b"someone else's key......"), &KEY),
            Err(UpdateError::Unsigned)
        );
        let mut other_id = answer_to(&u, 0, KEY.secret);
        other_id[0] ^= 1;
        assert_eq!(
            check_answer(&u, &other_id, &KEY),
            Err(UpdateError::Malformed)
        );
        let mut unsigned = answer_to(&u, 0, KEY.secret)[..12].to_vec();
        unsigned[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(
            check_answer(&u, &unsigned, &KEY),
            Err(UpdateError::Unsigned)
        );
        // Cut anywhere: an error, never a panic.
        let whole = answer_to(&u, 0, KEY.secret);
        for cut in 0..whole.len() {
            assert!(check_answer(&u, &whole[..cut], &KEY).is_err());
        }
    }

    #[test]
    fn names_are_checked() {
        let long = "a".repeat(64);
        assert!(matches!(
            build(
                "home.test",
                &format!("{long}.home.test"),
                "203.0.114.1".parse().unwrap(),
                Duration::from_secs(60),
                &KEY,
                1,
                SystemTime::now()
            ),
            Err(UpdateError::BadName(_))
        ));
    }
}
