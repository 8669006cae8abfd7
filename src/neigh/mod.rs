//! Neighbours: ARP resolution on the uplink, proxy ARP for pods, packets held while resolving.
