//! Network policy: the rule model, a compiled classifier, and connection tracking.
// ---- TEMPORARY SHIM (replaced by the real module on merge) ----
pub type EndpointId = u16;
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action { Allow, Deny }
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction { Ingress, Egress }
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fragment { None, First, NonFirst }
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey { pub src: u32, pub dst: u32, pub proto: u8, pub sport: u16, pub dport: u16, pub fragment: Fragment }
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HitSource { Global { rule: u32 }, Policy { policy: u32, rule: u32 }, DefaultDeny, DefaultAllow }
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RuleHit { pub action: Action, pub source: HitSource }
#[derive(Default)]
pub struct PolicyConfig;
pub struct PolicySet;
impl PolicySet {
    pub fn allow_all() -> PolicySet { PolicySet }
    pub fn evaluate(&self, _ep: Option<EndpointId>, _dir: Direction, _key: &FlowKey) -> RuleHit { RuleHit { action: Action::Allow, source: HitSource::DefaultAllow } }
    pub fn generation(&self) -> u64 { 0 }
    pub fn is_allow_all(&self) -> bool { true }
    pub fn describe(&self, _h: RuleHit) -> String { String::new() }
}
#[derive(Default, Clone, Copy, Debug)]
pub struct CtTimeouts;
pub enum CtDir { Original, Reply }
pub enum CtLookup { Hit { dir: CtDir, stale: bool }, Miss }
#[derive(Debug)]
pub enum CtError { Full }
pub struct ConnTrack;
impl ConnTrack {
    pub fn with_capacity(_n: usize, _t: CtTimeouts) -> Self { ConnTrack }
    pub fn lookup(&mut self, _k: &FlowKey, _f: u8, _now: u64, _g: u64) -> CtLookup { CtLookup::Miss }
    pub fn insert(&mut self, _k: &FlowKey, _f: u8, _now: u64, _g: u64) -> Result<(), CtError> { Ok(()) }
    pub fn refresh(&mut self, _k: &FlowKey, _g: u64) {}
    pub fn remove(&mut self, _k: &FlowKey) -> bool { false }
    pub fn expire(&mut self, _now: u64, _b: usize) -> usize { 0 }
}
