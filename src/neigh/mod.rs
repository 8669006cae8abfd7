//! Neighbours: ARP resolution on the uplink, proxy ARP for pods, packets held while resolving.
// ---- TEMPORARY SHIM (replaced by the real module on merge) ----
pub struct NeighConfig;
impl Default for NeighConfig { fn default() -> Self { NeighConfig } }
pub enum NeighLookup { Reachable([u8; 6]), Stale { mac: [u8; 6], probe: bool }, Incomplete { send_request: bool }, Failed, TableFull }
#[derive(Debug)]
pub enum NeighError { Unsolicited }
pub struct NeighTable { m: std::sync::Mutex<std::collections::HashMap<u32, Option<[u8; 6]>>> }
impl NeighTable {
    pub fn new(_c: NeighConfig) -> Self { NeighTable { m: Default::default() } }
    pub fn lookup(&self, ip: u32, _now: u64) -> NeighLookup {
        let mut m = self.m.lock().unwrap();
        match m.get(&ip) { Some(Some(mac)) => NeighLookup::Reachable(*mac), Some(None) => NeighLookup::Incomplete { send_request: false }, None => { m.insert(ip, None); NeighLookup::Incomplete { send_request: true } } }
    }
    pub fn on_reply(&self, ip: u32, mac: [u8; 6], _now: u64) -> Result<(), NeighError> {
        let mut m = self.m.lock().unwrap();
        match m.get_mut(&ip) { Some(e) => { *e = Some(mac); Ok(()) } None => Err(NeighError::Unsolicited) }
    }
    pub fn on_request_from(&self, _ip: u32, _mac: [u8; 6], _now: u64) {}
    pub fn add_static(&self, ip: u32, mac: [u8; 6]) -> Result<(), NeighError> { self.m.lock().unwrap().insert(ip, Some(mac)); Ok(()) }
}
#[derive(Debug)]
pub enum HoldError { PerNeighbourFull, PoolFull, TooBig }
pub struct HoldQueue { q: Vec<(u32, u16, Vec<u8>)> }
impl HoldQueue {
    pub fn new(_slots: usize, _per: usize, _size: usize) -> Self { HoldQueue { q: Vec::new() } }
    pub fn hold(&mut self, nh: u32, port: u16, frame: &[u8], _now: u64) -> Result<(), HoldError> { self.q.push((nh, port, frame.to_vec())); Ok(()) }
    pub fn release(&mut self, nh: u32, mut f: impl FnMut(u16, &mut [u8])) {
        let (mut a, b): (Vec<_>, Vec<_>) = self.q.drain(..).partition(|e| e.0 == nh);
        for e in a.iter_mut() { f(e.1, &mut e.2) } self.q = b;
    }
    pub fn expire(&mut self, _now: u64, _max: u64) -> usize { 0 }
    pub fn drop_neighbour(&mut self, _nh: u32) -> usize { 0 }
}
pub enum ProxyArp { Reply(usize), NotForUs, Ignore, Malformed(crate::wire::arp::ArpError) }
pub fn proxy_arp_answer(_frame: &mut [u8], _mac: [u8; 6], _ip: u32) -> ProxyArp { ProxyArp::Ignore }
