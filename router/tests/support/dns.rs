//! A small authoritative DNS server for tests, on 127.0.0.1 over UDP: A
//! records for the names it is given, with the TTL it is given, changed while
//! it runs; NXDOMAIN for any other name. Messages are hickory-proto's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

type Zone = HashMap<String, (Vec<Ipv4Addr>, u32)>;

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let task = {
            let (zone, queries) = (zone.clone(), queries.clone());
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
                    response.metadata.authoritative = true;
                    response.metadata.recursion_desired = query.metadata.recursion_desired;
                    response.metadata.recursion_available = true;
                    response.queries = query.queries.clone();
                    for question in &query.queries {
                        let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                        match zone.lock().unwrap().get(&name) {
                            Some((ips, ttl)) if question.query_type() == RecordType::A => {
                                for ip in ips {
                                    response.add_answer(Record::from_rdata(
                                        question.name().clone(),
                                        *ttl,
                                        RData::A(A(*ip)),
                                    ));
                                }
                            }
                            Some(_) => {}
                            None => response.metadata.response_code = ResponseCode::NXDomain,
                        }
                    }
                    if let Ok(bytes) = response.to_vec() {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                }
            })
        };
        Self {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Answer `name` with `ips` (none: NXDOMAIN), valid for `ttl` seconds.
    pub fn set(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let mut zone = self.zone.lock().unwrap();
        if ips.is_empty() {
            zone.remove(name);
        } else {
            zone.insert(name.to_owned(), (ips.to_vec(), ttl));
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}
