//! The flattened device tree describing the aarch64 guest: CPUs (PSCI), memory, GICv3,
//! architected timer, UART, boot timer, virtio-mmio devices and `/chosen`.

use vm_fdt::FdtWriter;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use super::{layout, ArchError, InitrdRegion};
use crate::vstate::memory::GuestMemoryMmap;

const GIC_PHANDLE: u32 = 1;
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// What the device tree describes.
#[derive(Debug)]
pub struct FdtInputs<'a> {
    /// vCPU count.
    pub vcpus: u32,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Initrd, if any.
    pub initrd: Option<InitrdRegion>,
    /// GIC distributor (base, size).
    pub gic_dist: (u64, u64),
    /// GIC redistributors (base, size).
    pub gic_redist: (u64, u64),
    /// virtio-mmio devices: (window base, SPI).
    pub virtio: &'a [(u64, u32)],
}

fn err(e: vm_fdt::Error) -> ArchError {
    ArchError::Fdt(e.to_string())
}

/// Builds the device tree blob.
pub fn build_fdt(mem: &GuestMemoryMmap, inp: &FdtInputs<'_>) -> Result<Vec<u8>, ArchError> {
    let mut f = FdtWriter::new().map_err(err)?;
    let root = f.begin_node("").map_err(err)?;
    f.property_string("compatible", "linux,dummy-virt")
        .map_err(err)?;
    f.property_u32("#address-cells", 2).map_err(err)?;
    f.property_u32("#size-cells", 2).map_err(err)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)
        .map_err(err)?;

    let cpus = f.begin_node("cpus").map_err(err)?;
    f.property_u32("#address-cells", 1).map_err(err)?;
    f.property_u32("#size-cells", 0).map_err(err)?;
    for i in 0..inp.vcpus {
        let cpu = f.begin_node(&format!("cpu@{i}")).map_err(err)?;
        f.property_string("device_type", "cpu").map_err(err)?;
        f.property_string("compatible", "arm,arm-v8").map_err(err)?;
        f.property_string("enable-method", "psci").map_err(err)?;
        f.property_u32("reg", i).map_err(err)?;
        f.end_node(cpu).map_err(err)?;
    }
    f.end_node(cpus).map_err(err)?;

    for region in mem.iter() {
        let node = f
            .begin_node(&format!("memory@{:x}", region.start_addr().raw_value()))
            .map_err(err)?;
        f.property_string("device_type", "memory").map_err(err)?;
        f.property_array_u64("reg", &[region.start_addr().raw_value(), region.len()])
            .map_err(err)?;
        f.end_node(node).map_err(err)?;
    }

    let chosen = f.begin_node("chosen").map_err(err)?;
    f.property_string("bootargs", inp.cmdline).map_err(err)?;
    f.property_string("stdout-path", &format!("/uart@{:x}", layout::SERIAL_ADDR))
        .map_err(err)?;
    if let Some(initrd) = inp.initrd {
        let start = initrd.addr.raw_value();
        f.property_u64("linux,initrd-start", start).map_err(err)?;
        f.property_u64("linux,initrd-end", start + initrd.size)
            .map_err(err)?;
    }
    f.end_node(chosen).map_err(err)?;

    let intc = f
        .begin_node(&format!("intc@{:x}", inp.gic_dist.0))
        .map_err(err)?;
    f.property_string("compatible", "arm,gic-v3").map_err(err)?;
    f.property_null("interrupt-controller").map_err(err)?;
    f.property_u32("#interrupt-cells", 3).map_err(err)?;
    f.property_array_u64(
        "reg",
        &[
            inp.gic_dist.0,
            inp.gic_dist.1,
            inp.gic_redist.0,
            inp.gic_redist.1,
        ],
    )
    .map_err(err)?;
    f.property_u32("phandle", GIC_PHANDLE).map_err(err)?;
    f.end_node(intc).map_err(err)?;

    let timer = f.begin_node("timer").map_err(err)?;
    f.property_string("compatible", "arm,armv8-timer")
        .map_err(err)?;
    f.property_null("always-on").map_err(err)?;
    let mut irqs = Vec::new();
    for ppi in [13u32, 14, 11, 10] {
        irqs.extend_from_slice(&[GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]);
    }
    f.property_array_u32("interrupts", &irqs).map_err(err)?;
    f.end_node(timer).map_err(err)?;

    let psci = f.begin_node("psci").map_err(err)?;
    f.property_string_list("compatible", vec!["arm,psci-0.2".into(), "arm,psci".into()])
        .map_err(err)?;
    f.property_string("method", "hvc").map_err(err)?;
    f.end_node(psci).map_err(err)?;

    let uart = f
        .begin_node(&format!("uart@{:x}", layout::SERIAL_ADDR))
        .map_err(err)?;
    f.property_string("compatible", "ns16550a").map_err(err)?;
    f.property_array_u64("reg", &[layout::SERIAL_ADDR, layout::SERIAL_SIZE])
        .map_err(err)?;
    f.property_u32("clock-frequency", 1_843_200).map_err(err)?;
    f.property_array_u32(
        "interrupts",
        &[GIC_SPI, layout::SERIAL_IRQ, IRQ_TYPE_EDGE_RISING],
    )
    .map_err(err)?;
    f.end_node(uart).map_err(err)?;

    for d in inp.virtio {
        let node = f
            .begin_node(&format!("virtio_mmio@{:x}", d.0))
            .map_err(err)?;
        f.property_string("compatible", "virtio,mmio")
            .map_err(err)?;
        f.property_array_u64("reg", &[d.0, crate::arch::MMIO_DEVICE_SIZE])
            .map_err(err)?;
        f.property_array_u32("interrupts", &[GIC_SPI, d.1, IRQ_TYPE_EDGE_RISING])
            .map_err(err)?;
        f.property_null("dma-coherent").map_err(err)?;
        f.end_node(node).map_err(err)?;
    }

    f.end_node(root).map_err(err)?;
    f.finish().map_err(err)
}

/// Builds the device tree and writes it to guest memory; returns its address.
pub fn create_fdt(
    mem: &GuestMemoryMmap,
    inp: &FdtInputs<'_>,
) -> Result<vm_memory::GuestAddress, ArchError> {
    let blob = build_fdt(mem, inp)?;
    super::write_fdt(mem, &blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use vm_memory::{Bytes, GuestAddress};

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn device_tree_describes_the_machine() {
        let mem = create_guest_memory(&super::super::arch_memory_ranges(64 << 20)).unwrap();
        let initrd = InitrdRegion {
            addr: GuestAddress(layout::DRAM_START + 0x100_0000),
            size: 0x1000,
        };
        let inp = FdtInputs {
            vcpus: 2,
            cmdline: "console=ttyS0 panic=1",
            initrd: Some(initrd),
            gic_dist: (layout::GIC_DIST_START, layout::GIC_DIST_SIZE),
            gic_redist: (
                layout::GIC_REDIST_START,
                2 * layout::GIC_REDIST_SIZE_PER_CPU,
            ),
            virtio: &[(layout::MMIO_DEVICES_START, layout::IRQ_BASE)],
        };
        let addr = create_fdt(&mem, &inp).unwrap();
        assert_eq!(addr, super::super::fdt_address(&mem));
        let magic: u32 = mem.read_obj(addr).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
        let blob = build_fdt(&mem, &inp).unwrap();
        for s in [
            &b"console=ttyS0 panic=1"[..],
            b"virtio,mmio",
            b"arm,gic-v3",
            b"arm,psci-0.2",
            b"ns16550a",
            b"cpu@1",
            b"virtio_mmio@a000000",
            b"linux,initrd-start",
        ] {
            assert!(
                contains(&blob, s),
                "{:?} missing",
                String::from_utf8_lossy(s)
            );
        }
    }
}
