//! The UDP fast path: a plain query for a cluster name is answered straight from the zone into
//! wire format, without building message objects. Anything else — another opcode, EDNS options
//! we do not handle, a name outside the zone, a malformed packet — returns `None` and takes the
//! full path (hickory), which answers it or refuses it properly.
//!
//! The answer's owner names point at the question (`0xC00C`), so names are echoed exactly as
//! asked.

use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{Answer, ClusterZone};

const CLASS_IN: u16 = 1;
const TYPE_OPT: u16 = 41;

/// What the fast path answered, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub qtype: u16,
    pub rcode: u16,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn put_name(out: &mut Vec<u8>, name: &Name) {
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

/// Appends one record's type, class, TTL and RDATA; None for types the fast path leaves alone.
fn put_rr_body(out: &mut Vec<u8>, r: &Record) -> Option<()> {
    out.extend_from_slice(&u16::from(r.record_type()).to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&r.ttl.to_be_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    match &r.data {
        RData::A(a) => out.extend_from_slice(&a.0.octets()),
        RData::AAAA(a) => out.extend_from_slice(&a.0.octets()),
        RData::CNAME(n) => put_name(out, &n.0),
        RData::PTR(n) => put_name(out, &n.0),
        RData::SRV(s) => {
            out.extend_from_slice(&s.priority.to_be_bytes());
            out.extend_from_slice(&s.weight.to_be_bytes());
            out.extend_from_slice(&s.port.to_be_bytes());
            put_name(out, &s.target);
        }
        RData::TXT(t) => {
            for s in t.txt_data.iter() {
                out.push(u8::try_from(s.len()).ok()?);
                out.extend_from_slice(s);
            }
        }
        RData::SOA(s) => {
            put_name(out, &s.mname);
            put_name(out, &s.rname);
            for v in [
                s.serial,
                s.refresh as u32,
                s.retry as u32,
                s.expire as u32,
                s.minimum,
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        _ => return None,
    }
    let len = u16::try_from(out.len() - len_at - 2).ok()?;
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    Some(())
}

/// Writes the response to `req` into `out`, or returns None to leave it to the full path. No
/// response is larger than `cap` bytes (at least 512), whatever the client advertises; `cap` is
/// also what we advertise.
pub fn answer(zone: &ClusterZone, req: &[u8], out: &mut Vec<u8>, cap: u16) -> Option<Outcome> {
    let cap = cap.max(512);
    if req.len() < 12 {
        return None;
    }
    let (b2, b3) = (req[2], req[3]);
    let (qd, an, ns, ar) = (
        u16_at(req, 4)?,
        u16_at(req, 6)?,
        u16_at(req, 8)?,
        u16_at(req, 10)?,
    );
    // A query (QR=0), opcode QUERY, no Z bits, one question, at most an OPT record.
    if b2 & 0x80 != 0
        || (b2 >> 3) & 0x0f != 0
        || b3 & 0x70 != 0
        || qd != 1
        || an != 0
        || ns != 0
        || ar > 1
    {
        return None;
    }
    // The question name: plain labels, no compression, at most 255 bytes; its lowercase wire
    // form is the zone's lookup key, built on the stack.
    let mut key = [0u8; 256];
    let mut i = 12;
    loop {
        let len = *req.get(i)? as usize;
        if len > 63 || i + 1 + len > req.len() || i - 12 + 1 + len > 255 {
            return None;
        }
        for (k, b) in key[i - 12..=i - 12 + len].iter_mut().zip(&req[i..=i + len]) {
            *k = b.to_ascii_lowercase();
        }
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    let key = &key[..i - 12];
    let (qtype, qclass) = (u16_at(req, i)?, u16_at(req, i + 2)?);
    let question_end = i + 4;
    // Zone transfers (IXFR 251, AXFR 252) are the full path's to refuse.
    if qclass != CLASS_IN || matches!(qtype, 251 | 252) {
        return None;
    }
    // An optional OPT record: root name, version 0, any options ignored.
    let mut limit = 512usize;
    let edns = ar == 1;
    if edns {
        let o = question_end;
        if *req.get(o)? != 0 || u16_at(req, o + 1)? != TYPE_OPT || *req.get(o + 6)? != 0 {
            return None;
        }
        let rdlen = u16_at(req, o + 9)? as usize;
        if o + 11 + rdlen != req.len() {
            return None;
        }
        limit = usize::from(u16_at(req, o + 3)?.clamp(512, cap));
    } else if question_end != req.len() {
        return None;
    }
    let found = zone.lookup_wire(key, RecordType::from(qtype));
    let (rcode, answers, authority, additionals): (u16, &[Record], Option<&Record>, Vec<&Record>) =
        match found {
            // Not ours (forwarded), or made for the question: the full path.
            Answer::NotOurs | Answer::Pod(_) => return None,
            // A CNAME for another type is chased on the full path.
            Answer::Records { answers, .. }
                if qtype != u16::from(RecordType::CNAME)
                    && answers
                        .first()
                        .is_some_and(|r| r.record_type() == RecordType::CNAME) =>
            {
                return None
            }
            Answer::Records {
                answers,
                additionals,
            } => (0, answers, None, additionals),
            Answer::NoData => (0, &[], Some(zone.soa()), vec![]),
            Answer::NxDomain => (3, &[], Some(zone.soa()), vec![]),
        };

    out.clear();
    out.extend_from_slice(&req[0..2]);
    // QR, opcode 0, AA, RD as asked; RA; the response code.
    out.push(0x84 | (b2 & 0x01));
    out.push(0x80 | rcode as u8);
    let counts_at = out.len();
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&req[12..question_end]);
    let header_and_question = out.len();
    for r in answers {
        out.extend_from_slice(&[0xC0, 0x0C]);
        put_rr_body(out, r)?;
    }
    if let Some(soa) = authority {
        put_name(out, &soa.name);
        put_rr_body(out, soa)?;
    }
    for r in &additionals {
        put_name(out, &r.name);
        put_rr_body(out, r)?;
    }
    let opt = [0u8, 0, 41, (cap >> 8) as u8, cap as u8, 0, 0, 0, 0, 0, 0];
    let mut counts = [
        answers.len(),
        usize::from(authority.is_some()),
        additionals.len() + usize::from(edns),
    ];
    if out.len() + if edns { opt.len() } else { 0 } > limit {
        // Too large for the client's buffer: the question alone, with TC set.
        out.truncate(header_and_question);
        out[2] |= 0x02;
        counts = [0, 0, usize::from(edns)];
    }
    if edns {
        out.extend_from_slice(&opt);
    }
    for (k, c) in counts.iter().enumerate() {
        let c = u16::try_from(*c).ok()?;
        out[counts_at + 2 + 2 * k..counts_at + 4 + 2 * k].copy_from_slice(&c.to_be_bytes());
    }
    Some(Outcome { qtype, rcode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::{Endpoint, Kind, Port, Service};
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};

    fn zone() -> ClusterZone {
        let services = vec![
            Service {
                namespace: "default".into(),
                name: "web".into(),
                kind: Kind::ClusterIp(vec!["10.96.0.10".parse().unwrap()]),
                ports: vec![Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80,
                }],
                endpoints: vec![],
            },
            Service {
                namespace: "default".into(),
                name: "many".into(),
                kind: Kind::Headless,
                ports: vec![],
                endpoints: (1..=60)
                    .map(|i| Endpoint {
                        addresses: vec![format!("10.245.0.{i}").parse().unwrap()],
                        hostname: None,
                        ready: true,
                    })
                    .collect(),
            },
        ];
        ClusterZone::build("cluster.local", 5, &services).unwrap()
    }

    fn query(name: &str, ty: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn run(req: &[u8]) -> Option<Message> {
        let mut out = Vec::new();
        answer(&zone(), req, &mut out, crate::server::DEFAULT_UDP_PAYLOAD)?;
        Some(Message::from_vec(&out).expect("the fast path writes valid messages"))
    }

    #[test]
    fn answers_parse_as_the_full_path_would_write_them() {
        let m = run(&query(
            "WeB.default.svc.cluster.local.",
            RecordType::A,
            false,
        ))
        .unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert!(
            m.metadata.authoritative
                && m.metadata.recursion_desired
                && m.metadata.recursion_available
        );
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].name.to_string(),
            "WeB.default.svc.cluster.local.",
            "echoed as asked"
        );
        assert_eq!(m.answers[0].data.to_string(), "10.96.0.10");
        let srv = run(&query(
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            true,
        ))
        .unwrap();
        assert_eq!(
            srv.answers[0].data.to_string(),
            "0 100 80 web.default.svc.cluster.local."
        );
        assert_eq!(srv.additionals.len(), 1);
        assert_eq!(
            srv.edns.as_ref().map(|e| e.max_payload()),
            Some(crate::server::DEFAULT_UDP_PAYLOAD)
        );
        let nx = run(&query(
            "nope.default.svc.cluster.local.",
            RecordType::A,
            false,
        ))
        .unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(nx.authorities[0].data, RData::SOA(_)));
        let nodata = run(&query(
            "web.default.svc.cluster.local.",
            RecordType::MX,
            false,
        ))
        .unwrap();
        assert_eq!(
            (
                nodata.metadata.response_code,
                nodata.answers.len(),
                nodata.authorities.len()
            ),
            (ResponseCode::NoError, 0, 1)
        );
    }

    #[test]
    fn large_answers_truncate_without_edns() {
        let small = run(&query(
            "many.default.svc.cluster.local.",
            RecordType::A,
            false,
        ))
        .unwrap();
        assert!(small.metadata.truncation && small.answers.is_empty());
        let big = run(&query(
            "many.default.svc.cluster.local.",
            RecordType::A,
            true,
        ))
        .unwrap();
        assert!(!big.metadata.truncation);
        assert_eq!(big.answers.len(), 60);
    }

    #[test]
    fn everything_else_takes_the_full_path() {
        assert!(
            run(&query("example.org.", RecordType::A, false)).is_none(),
            "not ours: forwarded"
        );
        let mut response = query("web.default.svc.cluster.local.", RecordType::A, false);
        response[2] |= 0x80;
        assert!(run(&response).is_none(), "a response is not a query");
        let mut trailing = query("web.default.svc.cluster.local.", RecordType::A, false);
        trailing.push(0);
        assert!(run(&trailing).is_none());
        for cut in 0..query("web.default.svc.cluster.local.", RecordType::A, true).len() {
            let q = query("web.default.svc.cluster.local.", RecordType::A, true);
            let _ = run(&q[..cut]);
        }
    }
}
