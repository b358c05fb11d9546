//! A route's backends: the addresses its endpoints stand for, what each has
//! shown of its health, and which one a new connection tries next.
//!
//! Built with the route table, so its settings (balancing, weights, health)
//! are the configuration's; what it learns while serving (addresses, health,
//! open connections, counters) lives in states shared by `Arc`, which a new
//! table takes over from the old one for every endpoint that stays: a reload
//! keeps them, and changes nothing for established connections.
//!
//! Weights belong to endpoints: an endpoint's share is split evenly over the
//! addresses its name resolves to, so a canary endpoint of weight 1 beside
//! one of weight 9 gets a tenth of the connections however many pods each
//! has. Passive health belongs to addresses: one whose connects fail
//! `health.failures` times in a row is ejected for a back-off that doubles
//! with each ejection in a row, then given one connection to prove itself.
//! When no address of a route is healthy, the ejected ones are tried anyway
//! (failing open, as Envoy's panic threshold does): a restart of every
//! backend must not turn into an outage as long as the back-off.
//!
//! Sync and without I/O: `upstream` resolves names and connects.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Balance, Endpoint, HealthSettings, WeightedEndpoint};

/// A route's backends, as configured, with the state they have built up.
#[derive(Debug)]
pub struct Pool {
    pub balance: Balance,
    pub health: HealthSettings,
    endpoints: Vec<PoolEndpoint>,
    state: Arc<PoolState>,
}

/// One configured endpoint and what has been learnt of it.
#[derive(Debug)]
pub struct PoolEndpoint {
    pub spec: WeightedEndpoint,
    pub state: Arc<EndpointState>,
}

/// What a pool keeps across reloads besides its endpoints.
#[derive(Debug, Default)]
struct PoolState {
    /// Turns of round-robin, and the tie-breaker of the others.
    cursor: AtomicU64,
    /// Keys for `random`'s draws: seeded once per process.
    random: std::hash::RandomState,
    /// The last pick found no healthy address: logged once per episode.
    failing_open: AtomicBool,
    /// Connections that found no healthy address and tried ejected ones.
    fail_opens: AtomicU64,
}

/// An endpoint's addresses and counters.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// The addresses it stands for: its own, or its name's last answer.
    addresses: Mutex<Vec<Arc<Address>>>,
    /// Round-robin among its addresses.
    cursor: AtomicU64,
    pub active: AtomicU64,
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    pub ejections: AtomicU64,
    /// Lookups of its name that got no answer (its last answer stood).
    pub lookup_failures: AtomicU64,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// When its name is looked up next (`resolve`).
    refresh: Mutex<Refresh>,
}

#[derive(Debug, Default)]
struct Refresh {
    /// `None`: never answered yet.
    next: Option<Instant>,
    in_flight: bool,
}

/// One address of an endpoint.
#[derive(Debug)]
pub struct Address {
    pub addr: SocketAddr,
    pub active: AtomicU64,
    health: Mutex<Health>,
    /// When it is checked next (active checks); `None`: not yet.
    check: Mutex<Refresh>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Connect failures in a row.
    failures: u32,
    /// Ejections in a row: the next back-off is `backoff` doubled this often.
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// What the status page shows of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressStatus {
    /// Ejected, and for how much longer.
    pub ejected_for: Option<Duration>,
    pub failures: u32,
    pub active: u64,
}

/// The address a connection is to try next.
#[derive(Debug, Clone)]
pub struct Pick {
    pub endpoint: usize,
    pub address: Arc<Address>,
    /// No address of the route was healthy: this one is ejected.
    pub fail_open: bool,
}

/// A connection relayed to an address, counted until dropped.
#[derive(Debug)]
pub struct Active {
    endpoint: Arc<EndpointState>,
    address: Arc<Address>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.address.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A candidate of one pick.
#[derive(Debug)]
struct Candidate {
    endpoint: usize,
    address: Arc<Address>,
    weight: u64,
    /// How many candidates share its endpoint's weight.
    share: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is counters and instants, whole after every write.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Address {
    fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            active: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            check: Mutex::new(Refresh::default()),
        })
    }

    /// Whether a check is due at `now` and none is in flight; if so, one is
    /// now, and the next is due `interval` later.
    pub fn start_check(&self, now: Instant, interval: Duration) -> bool {
        let mut check = lock(&self.check);
        if check.in_flight || check.next.is_some_and(|next| now < next) {
            return false;
        }
        check.in_flight = true;
        check.next = Some(now + interval);
        true
    }

    pub fn end_check(&self) {
        lock(&self.check).in_flight = false;
    }

    fn ejected(&self, now: Instant) -> bool {
        lock(&self.health).ejected_until.is_some_and(|until| now < until)
    }

    pub fn status(&self, now: Instant) -> AddressStatus {
        let health = *lock(&self.health);
        AddressStatus {
            ejected_for: health
                .ejected_until
                .and_then(|until| until.checked_duration_since(now))
                .filter(|left| !left.is_zero()),
            failures: health.failures,
            active: self.active.load(Ordering::Relaxed),
        }
    }
}

impl EndpointState {
    /// Whether it has an address to connect to (a name may have none yet,
    /// or none now).
    pub fn has_addresses(&self) -> bool {
        !lock(&self.addresses).is_empty()
    }

    /// Its name is to be looked up again at `at`.
    pub fn refresh_at(&self, at: Instant) {
        lock(&self.refresh).next = Some(at);
    }

    /// Whether its name is due for a lookup at `now` and none is in flight;
    /// if so, one now is (until [`EndpointState::end_refresh`]).
    pub fn start_refresh(&self, now: Instant) -> bool {
        let mut refresh = lock(&self.refresh);
        if refresh.in_flight || refresh.next.is_some_and(|next| now < next) {
            return false;
        }
        refresh.in_flight = true;
        true
    }

    pub fn end_refresh(&self) {
        lock(&self.refresh).in_flight = false;
    }

    pub fn lookup_failed(&self) {
        self.lookup_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The addresses it stands for now.
    pub fn addresses(&self) -> Vec<Arc<Address>> {
        lock(&self.addresses).clone()
    }

    /// A name's new answer: addresses that stay keep their health and counts.
    pub fn resolved(&self, answer: &[SocketAddr]) {
        let mut addresses = lock(&self.addresses);
        if addresses.len() == answer.len() && addresses.iter().zip(answer).all(|(a, b)| a.addr == *b) {
            return;
        }
        let kept: Vec<Arc<Address>> = answer
            .iter()
            .map(|addr| match addresses.iter().find(|a| a.addr == *addr) {
                Some(address) => address.clone(),
                None => Address::new(*addr),
            })
            .collect();
        *addresses = kept;
    }
}

impl Pool {
    /// A pool for `endpoints`, taking over the state `previous` (the same
    /// route in the table being replaced) built for those that stay.
    pub fn new(
        endpoints: Vec<WeightedEndpoint>,
        balance: Balance,
        health: HealthSettings,
        previous: Option<&Pool>,
    ) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|spec| {
                let kept = previous.and_then(|p| p.endpoints.iter().find(|e| e.spec.endpoint == spec.endpoint));
                let state = match kept {
                    Some(kept) => kept.state.clone(),
                    None => {
                        let state = EndpointState::default();
                        if let Endpoint::Addr(addr) = spec.endpoint {
                            state.resolved(&[addr]);
                        }
                        Arc::new(state)
                    }
                };
                PoolEndpoint { spec, state }
            })
            .collect();
        Self {
            balance,
            health,
            endpoints,
            state: previous.map(|p| p.state.clone()).unwrap_or_default(),
        }
    }

    pub fn endpoints(&self) -> &[PoolEndpoint] {
        &self.endpoints
    }

    /// Connections that found no healthy address and tried ejected ones.
    pub fn fail_opens(&self) -> u64 {
        self.state.fail_opens.load(Ordering::Relaxed)
    }

    /// Whether some address is healthy (false also for a name never resolved).
    pub fn healthy(&self, now: Instant) -> bool {
        self.endpoints
            .iter()
            .any(|e| lock(&e.state.addresses).iter().any(|a| !a.ejected(now)))
    }

    /// The address to try next for a client at `client`, among those not
    /// `tried` yet: a healthy one, or, when the route has none, an ejected
    /// one. `None` once every candidate was tried.
    pub fn pick(&self, client: IpAddr, tried: &[Arc<Address>], now: Instant) -> Option<Pick> {
        // One address (the usual route: one Service, or one backend): no
        // candidate list to build for every connection.
        if let [only] = self.endpoints.as_slice() {
            let addresses = lock(&only.state.addresses);
            if let [address] = addresses.as_slice() {
                if tried.iter().any(|t| Arc::ptr_eq(t, address)) {
                    return None;
                }
                let fail_open = address.ejected(now);
                if fail_open && tried.is_empty() {
                    self.state.fail_opens.fetch_add(1, Ordering::Relaxed);
                }
                return Some(Pick {
                    endpoint: 0,
                    address: address.clone(),
                    fail_open,
                });
            }
        }
        let mut healthy = Vec::new();
        let mut ejected = Vec::new();
        let mut any_healthy = false;
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let weight = u64::from(endpoint.spec.weight);
            for address in lock(&endpoint.state.addresses).iter() {
                let is_healthy = !address.ejected(now);
                any_healthy |= is_healthy;
                if tried.iter().any(|t| Arc::ptr_eq(t, address)) {
                    continue;
                }
                let candidate = Candidate {
                    endpoint: index,
                    address: address.clone(),
                    weight,
                    share: 0,
                };
                if is_healthy { &mut healthy } else { &mut ejected }.push(candidate);
            }
        }
        let fail_open = !any_healthy;
        let mut candidates = if fail_open { ejected } else { healthy };
        if candidates.is_empty() {
            return None;
        }
        if fail_open && tried.is_empty() {
            self.state.fail_opens.fetch_add(1, Ordering::Relaxed);
        }
        share_weights(&mut candidates);
        let n = self.state.cursor.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.balance {
            Balance::RoundRobin => round_robin(&candidates, n, |e| {
                self.endpoints[e].state.cursor.fetch_add(1, Ordering::Relaxed)
            }),
            Balance::LeastConnections => least_loaded(&candidates, n),
            Balance::Random => {
                let draw = |k: u64| self.state.random.hash_one((n, k));
                power_of_two(&candidates, draw(0), draw(1))
            }
            Balance::Source => rendezvous(&candidates, client),
        };
        let candidate = candidates.swap_remove(chosen);
        Some(Pick {
            endpoint: candidate.endpoint,
            address: candidate.address,
            fail_open,
        })
    }

    /// Whether this pick starts (`Some(true)`) or ends (`Some(false)`) an
    /// episode of failing open, for one log line per episode.
    pub fn failing_open(&self, now_failing: bool) -> Option<bool> {
        let was = self.state.failing_open.swap(now_failing, Ordering::Relaxed);
        (was != now_failing).then_some(now_failing)
    }

    /// A connect to `pick` succeeded: its address is healthy, and the
    /// connection is counted until the returned guard is dropped.
    pub fn connected(&self, pick: &Pick) -> Active {
        let endpoint = &self.endpoints[pick.endpoint].state;
        endpoint.connections.fetch_add(1, Ordering::Relaxed);
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        pick.address.active.fetch_add(1, Ordering::Relaxed);
        restore(&pick.address);
        Active {
            endpoint: endpoint.clone(),
            address: pick.address.clone(),
        }
    }

    /// A connect to `pick` failed. Returns the back-off when this failure
    /// ejected its address.
    pub fn failed(&self, pick: &Pick, now: Instant) -> Option<Duration> {
        self.endpoints[pick.endpoint]
            .state
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.failure(pick, now)
    }

    /// An active check of `pick` passed. Returns whether that ended an
    /// ejection.
    pub fn check_passed(&self, pick: &Pick, now: Instant) -> bool {
        self.endpoints[pick.endpoint]
            .state
            .checks_passed
            .fetch_add(1, Ordering::Relaxed);
        let was_ejected = pick.address.ejected(now);
        restore(&pick.address);
        was_ejected
    }

    /// An active check of `pick` failed: as a failed connect. Returns the
    /// back-off when this ejected its address.
    pub fn check_failed(&self, pick: &Pick, now: Instant) -> Option<Duration> {
        self.endpoints[pick.endpoint]
            .state
            .checks_failed
            .fetch_add(1, Ordering::Relaxed);
        self.failure(pick, now)
    }

    fn failure(&self, pick: &Pick, now: Instant) -> Option<Duration> {
        let endpoint = &self.endpoints[pick.endpoint].state;
        if self.health.failures == 0 {
            return None;
        }
        let mut health = lock(&pick.address.health);
        // An ejected address tried while failing open keeps its back-off.
        if health.ejected_until.is_some_and(|until| now < until) {
            return None;
        }
        health.failures = health.failures.saturating_add(1);
        if health.failures < self.health.failures {
            return None;
        }
        let backoff = self.health.backoff_for(health.ejections);
        health.ejections = health.ejections.saturating_add(1);
        health.ejected_until = Some(now + backoff);
        // On probation once the back-off ends: one more failure ejects again.
        health.failures = self.health.failures - 1;
        endpoint.ejections.fetch_add(1, Ordering::Relaxed);
        Some(backoff)
    }
}

/// A success: the address is healthy, its back-off back to the first.
fn restore(address: &Address) {
    let mut health = lock(&address.health);
    if health.failures != 0 || health.ejected_until.is_some() {
        *health = Health::default();
    }
}

/// Each candidate's share: how many candidates its endpoint's weight is
/// split over. Candidates come grouped by endpoint.
fn share_weights(candidates: &mut [Candidate]) {
    let mut start = 0;
    while start < candidates.len() {
        let endpoint = candidates[start].endpoint;
        let len = candidates[start..]
            .iter()
            .take_while(|c| c.endpoint == endpoint)
            .count();
        for candidate in &mut candidates[start..start + len] {
            candidate.share = len as u64;
        }
        start += len;
    }
}

/// Turn `n` of weighted round-robin: endpoints in proportion to their weights
/// (in runs: weights 3 and 1 give a, a, a, b), then the endpoint's addresses
/// in turn (`next_of(endpoint)`).
fn round_robin(candidates: &[Candidate], n: u64, next_of: impl Fn(usize) -> u64) -> usize {
    let groups = || {
        candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || candidates[i - 1].endpoint != c.endpoint)
    };
    let total: u64 = groups().map(|(_, c)| c.weight).sum();
    let mut position = n % total.max(1);
    for (start, group) in groups() {
        if position < group.weight {
            return start + (next_of(group.endpoint) % group.share) as usize;
        }
        position -= group.weight;
    }
    0
}

/// `a` carries less load than `b` for its share of weight: fewer open
/// connections per unit of the weight its address gets (weight / share).
fn lighter(a: &Candidate, b: &Candidate) -> bool {
    let load = |c: &Candidate, other: &Candidate| {
        u128::from(c.address.active.load(Ordering::Relaxed)) * u128::from(c.share) * u128::from(other.weight)
    };
    load(a, b) < load(b, a)
}

/// The least loaded candidate; ties go round, from turn `n`.
fn least_loaded(candidates: &[Candidate], n: u64) -> usize {
    let len = candidates.len();
    let start = (n % len as u64) as usize;
    let mut best = start;
    for offset in 1..len {
        let i = (start + offset) % len;
        if lighter(&candidates[i], &candidates[best]) {
            best = i;
        }
    }
    best
}

/// Two weighted draws (`r1`, `r2` uniform), the less loaded one taken.
fn power_of_two(candidates: &[Candidate], r1: u64, r2: u64) -> usize {
    let (a, b) = (weighted_draw(candidates, r1), weighted_draw(candidates, r2));
    if lighter(&candidates[b], &candidates[a]) { b } else { a }
}

/// A candidate drawn by weight share, from a uniform `r`.
fn weighted_draw(candidates: &[Candidate], r: u64) -> usize {
    // Weight / share in whole units, without fractions.
    let units = |c: &Candidate| c.weight * (SHARE_SCALE / c.share.clamp(1, SHARE_SCALE));
    let total: u64 = candidates.iter().map(units).sum();
    let mut position = r % total.max(1);
    for (i, candidate) in candidates.iter().enumerate() {
        let u = units(candidate);
        if position < u {
            return i;
        }
        position -= u;
    }
    0
}

/// Shares are split in units of 1/SHARE_SCALE: exact for endpoints of up to
/// 12 addresses (and for any count dividing 720,720), close enough beyond.
const SHARE_SCALE: u64 = 720_720;

/// Weighted rendezvous hashing: every candidate scores a hash of (client,
/// its address), scaled by its weight share; the highest wins. A client keeps
/// its backend while the addresses stay, and when one goes only its clients
/// move.
fn rendezvous(candidates: &[Candidate], client: IpAddr) -> usize {
    let score = |c: &Candidate| {
        let hash = stable_hash(client, c.address.addr);
        // In (0, 1): never 0, never 1, so the logarithm is finite and < 0.
        let uniform = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (c.weight as f64 / c.share as f64) / -uniform.ln()
    };
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, candidate) in candidates.iter().enumerate() {
        let s = score(candidate);
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    best
}

/// A hash of (client, backend) that is the same in every process and
/// release, so that routers behind one load balancer, and a restarted one,
/// send a client to the same backend: FNV-1a, then SplitMix64's finaliser.
fn stable_hash(client: IpAddr, backend: SocketAddr) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match client {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    match backend.ip() {
        IpAddr::V4(ip) => eat(&ip.octets()),
        IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&backend.port().to_be_bytes());
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    fn endpoint(n: u16, weight: u32) -> WeightedEndpoint {
        WeightedEndpoint {
            endpoint: Endpoint::Addr(addr(n)),
            weight,
        }
    }

    fn name(host: &str, weight: u32) -> WeightedEndpoint {
        WeightedEndpoint {
            endpoint: Endpoint::Name {
                host: host.into(),
                port: 1,
            },
            weight,
        }
    }

    fn pool(endpoints: Vec<WeightedEndpoint>, balance: Balance) -> Pool {
        Pool::new(endpoints, balance, HealthSettings::DEFAULT, None)
    }

    fn client(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// Connections per address over `n` picks, each connection closed at once.
    fn spread(pool: &Pool, n: usize) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        let now = Instant::now();
        for i in 0..n {
            let pick = pool.pick(client(i as u8), &[], now).unwrap();
            *counts.entry(pick.address.addr.port()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_the_weights_and_splits_a_name_over_its_addresses() {
        let weighted = pool(vec![endpoint(1, 3), endpoint(2, 1)], Balance::RoundRobin);
        assert_eq!(spread(&weighted, 40), HashMap::from([(1, 30), (2, 10)]));

        let named = pool(vec![name("pods.test", 1), endpoint(3, 1)], Balance::RoundRobin);
        named.endpoints()[0].state.resolved(&[addr(1), addr(2)]);
        assert_eq!(spread(&named, 40), HashMap::from([(1, 10), (2, 10), (3, 20)]));
    }

    #[test]
    fn least_connections_takes_the_lightest_for_its_weight() {
        let pool = pool(vec![endpoint(1, 2), endpoint(2, 1)], Balance::LeastConnections);
        let now = Instant::now();
        let mut open = Vec::new();
        for _ in 0..30 {
            let pick = pool.pick(client(1), &[], now).unwrap();
            open.push(pool.connected(&pick));
        }
        let active: Vec<u64> = pool
            .endpoints()
            .iter()
            .map(|e| e.state.active.load(Ordering::Relaxed))
            .collect();
        assert_eq!(active, [20, 10]);
        drop(open);
        assert!(
            pool.endpoints()
                .iter()
                .all(|e| e.state.active.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn random_draws_by_weight() {
        let pool = pool(vec![endpoint(1, 3), endpoint(2, 1)], Balance::Random);
        let counts = spread(&pool, 8000);
        let ratio = counts[&1] as f64 / counts[&2] as f64;
        assert!((2.6..3.4).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn source_keeps_a_client_and_moves_only_the_clients_of_a_removed_address() {
        let four = pool((1..=4).map(|n| endpoint(n, 1)).collect(), Balance::Source);
        let now = Instant::now();
        let before: Vec<u16> = (0..200)
            .map(|c| four.pick(client(c), &[], now).unwrap().address.addr.port())
            .collect();
        let again: Vec<u16> = (0..200)
            .map(|c| four.pick(client(c), &[], now).unwrap().address.addr.port())
            .collect();
        assert_eq!(before, again);
        let per_address = spread(&four, 200);
        assert!(per_address.values().all(|&n| n > 25), "{per_address:?}");

        let three = pool((1..=3).map(|n| endpoint(n, 1)).collect(), Balance::Source);
        for (c, &port) in before.iter().enumerate() {
            let now_port = three.pick(client(c as u8), &[], now).unwrap().address.addr.port();
            if port != 4 {
                assert_eq!(now_port, port, "client {c} moved although its address stayed");
            }
        }
    }

    #[test]
    fn failures_in_a_row_eject_for_a_growing_backoff_and_a_success_restores() {
        let health = HealthSettings {
            failures: 2,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            check: None,
        };
        let pool = Pool::new(vec![endpoint(1, 1), endpoint(2, 1)], Balance::RoundRobin, health, None);
        let t0 = Instant::now();
        let dead = || Pick {
            endpoint: 0,
            address: pool.endpoints()[0].state.addresses()[0].clone(),
            fail_open: false,
        };
        assert_eq!(pool.failed(&dead(), t0), None);
        assert_eq!(pool.failed(&dead(), t0), Some(Duration::from_secs(10)));
        // Ejected: only the other is picked.
        assert!((0..10).all(|_| pool.pick(client(1), &[], t0).unwrap().endpoint == 1));
        // After the back-off it is tried again; one failure ejects it for twice as long.
        let t1 = t0 + Duration::from_secs(11);
        assert!((0..4).any(|_| pool.pick(client(1), &[], t1).unwrap().endpoint == 0));
        assert_eq!(pool.failed(&dead(), t1), Some(Duration::from_secs(20)));
        assert_eq!(pool.endpoints()[0].state.ejections.load(Ordering::Relaxed), 2);
        // A success makes it healthy again, its back-off back to the first.
        let t2 = t1 + Duration::from_secs(21);
        drop(pool.connected(&dead()));
        assert_eq!(pool.failed(&dead(), t2), None);
        assert_eq!(pool.failed(&dead(), t2), Some(Duration::from_secs(10)));
    }

    #[test]
    fn with_every_address_ejected_the_route_fails_open() {
        let pool = pool(vec![endpoint(1, 1), endpoint(2, 1)], Balance::RoundRobin);
        let now = Instant::now();
        for e in 0..2 {
            let pick = Pick {
                endpoint: e,
                address: pool.endpoints()[e].state.addresses()[0].clone(),
                fail_open: false,
            };
            while pool.failed(&pick, now).is_none() {}
        }
        assert!(!pool.healthy(now));
        let first = pool.pick(client(1), &[], now).unwrap();
        assert!(first.fail_open);
        let second = pool.pick(client(1), std::slice::from_ref(&first.address), now).unwrap();
        assert_ne!(first.address.addr, second.address.addr);
        assert!(pool.pick(client(1), &[first.address, second.address], now).is_none());
        assert_eq!(pool.fail_opens(), 1, "counted once per connection");
        assert_eq!(pool.failing_open(true), Some(true));
        assert_eq!(pool.failing_open(true), None);
        assert_eq!(pool.failing_open(false), Some(false));
    }

    #[test]
    fn a_new_pool_takes_over_the_state_of_endpoints_that_stay() {
        let old = pool(vec![endpoint(1, 1), endpoint(2, 1)], Balance::RoundRobin);
        let now = Instant::now();
        let pick = old.pick(client(1), &[], now).unwrap();
        let open = old.connected(&pick);
        let new = Pool::new(
            vec![endpoint(pick.address.addr.port(), 5), endpoint(3, 1)],
            Balance::LeastConnections,
            HealthSettings::DEFAULT,
            Some(&old),
        );
        let kept = &new.endpoints()[0];
        assert_eq!(kept.spec.weight, 5, "settings are the new configuration's");
        assert_eq!(kept.state.active.load(Ordering::Relaxed), 1);
        assert_eq!(kept.state.connections.load(Ordering::Relaxed), 1);
        assert_eq!(new.endpoints()[1].state.connections.load(Ordering::Relaxed), 0);
        drop(open);
        assert_eq!(kept.state.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_new_answer_keeps_the_health_of_addresses_that_stay() {
        let pool = pool(vec![name("pods.test", 1)], Balance::RoundRobin);
        let state = &pool.endpoints()[0].state;
        state.resolved(&[addr(1), addr(2)]);
        let first = state.addresses()[0].clone();
        state.resolved(&[addr(3), addr(1)]);
        let ports: Vec<u16> = state.addresses().iter().map(|a| a.addr.port()).collect();
        assert_eq!(ports, [3, 1]);
        assert!(Arc::ptr_eq(&state.addresses()[1], &first));
    }
}
