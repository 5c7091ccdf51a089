//! Address blocks as both simulated allocators hand them out: Compute's alias ranges sent as a
//! bare `/N`, and the node IPAM controller's podCIDRs. Each takes the first block of the wanted
//! size, in address order, that overlaps nothing in use.

use nodewire::names::Cidr;

/// The first `/prefix_len` block of `range` that overlaps none of `in_use`; `None` when the
/// range is exhausted or `prefix_len` does not fit in it.
pub(crate) fn first_free(range: Cidr, prefix_len: u8, in_use: &[Cidr]) -> Option<Cidr> {
    range
        .net()
        .subnets(prefix_len)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|n| n.to_string().parse::<Cidr>().ok())
        .find(|c| !in_use.iter().any(|u| u.overlaps(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn takes_the_first_block_clear_of_every_range_in_use() {
        let range = cidr("10.4.0.0/22");
        assert_eq!(first_free(range, 24, &[]), Some(cidr("10.4.0.0/24")));
        let used = [cidr("10.4.0.0/24"), cidr("10.4.1.8/29")];
        assert_eq!(first_free(range, 24, &used), Some(cidr("10.4.2.0/24")));
        assert_eq!(first_free(range, 22, &used), None, "exhausted");
        assert_eq!(first_free(range, 21, &[]), None, "larger than the range");
    }
}
