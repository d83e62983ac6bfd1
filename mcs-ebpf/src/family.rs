//! The maps of each address family behind one interface, so the lookup,
//! selection and conntrack code is written once and instantiated twice:
//! `u32` (IPv4: `MCS_SVC_V2`, `MCS_BACKEND_V2`, `MCS_CT_V1`,
//! `MCS_AFFINITY_V1`) and `Addr6` (IPv6: the `_V6` maps). The maps indexed
//! by frontend or backend id (counters, Maglev tables) are shared and not
//! here.

use aya_ebpf::bindings::BPF_ANY;
use mcs_common::{
    AffinityKeyOf, AffinityValueOf, BackendKey, BackendValueOf, CtKeyOf, CtValueOf, ServiceKeyOf,
    ServiceValue, byte_order::Addr6,
};

use crate::{
    maps::{
        MCS_AFFINITY_V1, MCS_AFFINITY_V6, MCS_BACKEND_V2, MCS_BACKEND_V6, MCS_CT_V1, MCS_CT_V6,
        MCS_SVC_V2, MCS_SVC_V6,
    },
    packet::{IpFamily, Packet},
};

/// An address family's maps.
pub trait Family: IpFamily {
    /// The frontend of `key`, copied out.
    fn service(key: &ServiceKeyOf<Self>) -> Option<ServiceValue>;
    /// The backend in a slot, copied out.
    fn backend(key: &BackendKey) -> Option<BackendValueOf<Self>>;
    fn ct_lookup(key: &CtKeyOf<Self>) -> Option<*mut CtValueOf<Self>>;
    fn ct_insert(key: &CtKeyOf<Self>, value: &CtValueOf<Self>) -> Result<(), i32>;
    /// Deletes an entry; one already gone (evicted, expired) is fine.
    fn ct_remove(key: &CtKeyOf<Self>);
    fn affinity_lookup(key: &AffinityKeyOf<Self>) -> Option<*mut AffinityValueOf<Self>>;
    /// Binds a client; an LRU insert only fails under memory pressure, and
    /// the client hash keeps the client on its backend anyway.
    fn affinity_insert(key: &AffinityKeyOf<Self>, value: &AffinityValueOf<Self>);
    /// The packet as an IPv6 one, if it is (the refusals are built per
    /// family; `IpFamily::v4` is the other half).
    fn v6(pkt: &Packet<Self>) -> Option<&Packet<Addr6>>;
    /// The affinity "address" of a socket-LB client (a fold of its network
    /// namespace's cookie: socket LB does not know the client's address).
    fn of_client(client: u32) -> Self;
}

macro_rules! family {
    ($addr:ty, $svc:ident, $backend:ident, $ct:ident, $affinity:ident, $v6:expr, $client:expr) => {
        impl Family for $addr {
            #[inline(always)]
            fn of_client(client: u32) -> Self {
                $client(client)
            }

            #[inline(always)]
            fn v6(pkt: &Packet<Self>) -> Option<&Packet<Addr6>> {
                $v6(pkt)
            }

            #[inline(always)]
            fn service(key: &ServiceKeyOf<Self>) -> Option<ServiceValue> {
                // SAFETY: the value is copied out at once; the agent replaces
                // entries whole, so a concurrent update yields the old or the
                // new value.
                unsafe { $svc.get(key).copied() }
            }

            #[inline(always)]
            fn backend(key: &BackendKey) -> Option<BackendValueOf<Self>> {
                // SAFETY: copied out at once (as above).
                unsafe { $backend.get(key).copied() }
            }

            #[inline(always)]
            fn ct_lookup(key: &CtKeyOf<Self>) -> Option<*mut CtValueOf<Self>> {
                $ct.get_ptr_mut(key)
            }

            #[inline(always)]
            fn ct_insert(key: &CtKeyOf<Self>, value: &CtValueOf<Self>) -> Result<(), i32> {
                $ct.insert(key, value, u64::from(BPF_ANY))
            }

            #[inline(always)]
            fn ct_remove(key: &CtKeyOf<Self>) {
                let _ = $ct.remove(key);
            }

            #[inline(always)]
            fn affinity_lookup(key: &AffinityKeyOf<Self>) -> Option<*mut AffinityValueOf<Self>> {
                $affinity.get_ptr_mut(key)
            }

            #[inline(always)]
            fn affinity_insert(key: &AffinityKeyOf<Self>, value: &AffinityValueOf<Self>) {
                let _ = $affinity.insert(key, value, u64::from(BPF_ANY));
            }
        }
    };
}

family!(
    u32,
    MCS_SVC_V2,
    MCS_BACKEND_V2,
    MCS_CT_V1,
    MCS_AFFINITY_V1,
    |_| None,
    |client| client
);
family!(
    Addr6,
    MCS_SVC_V6,
    MCS_BACKEND_V6,
    MCS_CT_V6,
    MCS_AFFINITY_V6,
    Some,
    |client| [client, 0, 0, 0]
);
