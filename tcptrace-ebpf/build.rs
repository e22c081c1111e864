use which::which;

/// Rebuild the eBPF object when bpf-linker changes (aya-template's recipe).
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH: run `cargo xtask setup`, which installs it");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
