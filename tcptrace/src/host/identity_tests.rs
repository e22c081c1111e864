use std::fs;

use super::*;
use crate::model::workload::Workload;

const CID: &str = "4f1c0b8a9e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccd";
const UID: &str = "0b7c9e3e-7c1a-4b1e-9a55-2f0c4d1e8a77";

#[test]
fn systemd_driver_pods_and_containers() {
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
        UID.replace('-', "_")
    );
    let facts = parse_path(&path);
    assert_eq!(facts.pod_uid.as_deref(), Some(UID), "{path}");
    assert_eq!(facts.container_id.as_deref(), Some(CID));
    assert_eq!(facts.runtime, Some("containerd"));
    assert_eq!(facts.unit, None, "a container scope is not a unit");
    // Guaranteed pods sit right under kubepods.slice; CRI-O names its scopes crio-.
    let guaranteed = format!(
        "/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope",
        UID.replace('-', "_")
    );
    let facts = parse_path(&guaranteed);
    assert_eq!(facts.pod_uid.as_deref(), Some(UID));
    assert_eq!(facts.runtime, Some("cri-o"));
}

#[test]
fn cgroupfs_driver_pods_and_containers() {
    let facts = parse_path(&format!("/kubepods/besteffort/pod{UID}/{CID}"));
    assert_eq!(facts.pod_uid.as_deref(), Some(UID));
    assert_eq!(facts.container_id.as_deref(), Some(CID));
    assert_eq!(
        facts.runtime, None,
        "the cgroupfs driver does not say the runtime"
    );
    let pod_only = parse_path(&format!("/kubepods/pod{UID}"));
    assert_eq!(
        (pod_only.pod_uid.as_deref(), pod_only.container_id),
        (Some(UID), None)
    );
    // "pod…" outside kubepods is not a pod.
    assert_eq!(parse_path(&format!("/pod{UID}")).pod_uid, None);
}

#[test]
fn runtimes_and_units_outside_kubernetes() {
    let docker = parse_path(&format!("/system.slice/docker-{CID}.scope"));
    assert_eq!(
        (docker.container_id.as_deref(), docker.runtime),
        (Some(CID), Some("docker"))
    );
    let podman = parse_path(&format!("/machine.slice/libpod-{CID}.scope/container"));
    assert_eq!(podman.runtime, Some("podman"));
    // Podman's cgroupfs manager (no systemd), as runc makes it on a hybrid host.
    let podman_fs = parse_path(&format!("/libpod_parent/libpod-{CID}"));
    assert_eq!(
        (podman_fs.container_id.as_deref(), podman_fs.runtime),
        (Some(CID), Some("podman"))
    );
    let docker_fs = parse_path(&format!("/docker/{CID}"));
    assert_eq!(
        (docker_fs.container_id.as_deref(), docker_fs.runtime),
        (Some(CID), Some("docker"))
    );
    let unit = parse_path("/system.slice/nginx.service");
    assert_eq!(unit.unit.as_deref(), Some("nginx.service"));
    let session = parse_path("/user.slice/user-0.slice/session-3.scope");
    assert_eq!(session.unit.as_deref(), Some("session-3.scope"));
    assert_eq!(parse_path("/"), PathFacts::default());
    // A 64-hex name alone, outside any pod or runtime, is nobody's container.
    assert_eq!(parse_path(&format!("/{CID}")).container_id, None);
}

#[test]
fn names_come_from_the_kubelets_log_directories() {
    let dir = std::env::temp_dir().join(format!("tcptrace-identity-{}", std::process::id()));
    let pods = dir.join("pods");
    let containers = dir.join("containers");
    fs::create_dir_all(pods.join(format!("shop_cart-7d9f_{UID}/server"))).expect("mkdir");
    fs::create_dir_all(pods.join(format!("shop_cart-7d9f_{UID}/sidecar"))).expect("mkdir");
    fs::create_dir_all(&containers).expect("mkdir");
    fs::write(
        containers.join(format!("cart-7d9f_shop_server-{CID}.log")),
        "",
    )
    .expect("write");
    fs::write(containers.join("not-a-container.log"), "").expect("write");
    let directory = PodDirectory::read(&pods, &containers);
    let _ = fs::remove_dir_all(&dir);

    let path = format!("/kubepods/burstable/pod{UID}/{CID}");
    let identity = directory.identify(77, &path);
    assert_eq!(identity.namespace.as_deref(), Some("shop"));
    assert_eq!(identity.pod.as_deref(), Some("cart-7d9f"));
    assert_eq!(identity.container.as_deref(), Some("server"));
    assert_eq!(identity.label(), "shop/cart-7d9f/server");
    assert!(!identity.incomplete());

    // Another container of the pod, not in /var/log/containers: two candidates, no guess.
    let other = "a".repeat(64);
    let sidecar = directory.identify(78, &format!("/kubepods/burstable/pod{UID}/{other}"));
    assert_eq!(sidecar.container, None);
    assert_eq!(sidecar.label(), "shop/cart-7d9f/aaaaaaaaaaaa");
    // The pod's own cgroup.
    let pod = directory.identify(79, &format!("/kubepods/burstable/pod{UID}"));
    assert_eq!(pod.label(), "shop/cart-7d9f");

    // A pod the node has no log directory for yet: named by its UID, and incomplete.
    let unknown = PodDirectory::default().identify(80, &path);
    assert!(unknown.incomplete());
    assert_eq!(
        unknown.label(),
        format!("pod:{}/{}", &UID[..12], &CID[..12])
    );
}

#[test]
fn labels_and_unknowns() {
    let unit = PodDirectory::default().identify(5, "/system.slice/nginx.service");
    assert_eq!(unit.label(), "nginx.service");
    let root = PodDirectory::default().identify(1, "/");
    assert_eq!(root.label(), "cgroup:1");
    assert_eq!(
        Workload::unresolved(42).label().as_deref(),
        Some("cgroup:42")
    );
    assert_eq!(Workload::default().label(), None);
    assert_eq!(format!("{:>6}", Workload::default()), "     -");
}

#[test]
fn one_container_pods_name_their_container_without_the_containers_directory() {
    let dir = std::env::temp_dir().join(format!("tcptrace-identity1-{}", std::process::id()));
    let pods = dir.join("pods");
    fs::create_dir_all(pods.join(format!("web_api-0_{UID}/api"))).expect("mkdir");
    let directory = PodDirectory::read(&pods, &dir.join("none"));
    let _ = fs::remove_dir_all(&dir);
    let identity = directory.identify(
        9,
        &format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        ),
    );
    assert_eq!(identity.label(), "web/api-0/api");
}
