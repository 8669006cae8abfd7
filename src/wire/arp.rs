// ---- TEMPORARY SHIM ----
#[derive(Debug)]
pub enum ArpError { Short }
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub struct ArpPacket<T: AsRef<[u8]>> { b: T }
impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub fn new_checked(b: T) -> Result<Self, ArpError> { if b.as_ref().len() < 28 { return Err(ArpError::Short) } Ok(ArpPacket { b }) }
    pub fn operation(&self) -> u16 { u16::from_be_bytes([self.b.as_ref()[6], self.b.as_ref()[7]]) }
    pub fn sender_mac(&self) -> [u8; 6] { self.b.as_ref()[8..14].try_into().unwrap() }
    pub fn sender_ip(&self) -> u32 { u32::from_be_bytes(self.b.as_ref()[14..18].try_into().unwrap()) }
    pub fn target_ip(&self) -> u32 { u32::from_be_bytes(self.b.as_ref()[24..28].try_into().unwrap()) }
}
pub fn build_request(_buf: &mut [u8], _src_mac: [u8; 6], _src_ip: u32, _target: u32) -> usize { 60 }
pub fn reply_in_place(_frame: &mut [u8], _mac: [u8; 6]) -> Option<usize> { Some(60) }
pub fn build_reply(_b: &mut [u8], _m: [u8; 6], _i: u32, _tm: [u8; 6], _ti: u32) -> usize { 60 }
