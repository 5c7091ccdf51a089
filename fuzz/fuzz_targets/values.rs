//! The small parsers of outside values — a Node's providerID, a CIDR, a subnetwork link, the
//! kubelet-restart metadata value, the cluster-info kubeconfig: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = nodewire::names::InstanceRef::from_provider_id(text);
    let _ = text.parse::<nodewire::names::Cidr>();
    let _ = nodewire::names::SubnetRef::from_link(text);
    let _ = nodewire::plan::Attempts::parse(
        text,
        1_780_000_000,
        &nodewire::plan::Budget::KUBELET_RESTARTS,
    );
    let _ = nodewire::act::k8s::cluster_info_from_kubeconfig(text);
});
