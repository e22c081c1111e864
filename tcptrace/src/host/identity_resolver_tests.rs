use super::*;

/// This process's own cgroup, found by its id alone, is the path /proc/self/cgroup names.
#[test]
fn a_cgroup_is_found_by_its_id() {
    let root = cgroup2_mount().expect("cgroup v2 is mounted here");
    let own = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string();
    let id = fs::metadata(root.join(path.trim_start_matches('/')))
        .expect("our cgroup's directory")
        .ino();
    let found = path_of_id(&root, id).expect("not refused to root");
    assert_eq!(found.as_deref(), Some(path.as_str()));
    let none = path_of_id(&root, u64::MAX - 1).expect("not refused");
    assert_eq!(none, None, "no such cgroup");
}

/// A full cache forgets the cgroups gone longest first, and says what it forgot; with
/// every one held still live, a new cgroup is counted, not cached.
#[test]
fn a_full_cache_forgets_the_cgroups_gone_longest_first() {
    // Real cgroups: their ids (inodes) are never reused, as a plain directory's can be.
    let root = cgroup2_mount().expect("cgroup v2 is mounted here");
    let dir = root.join(format!("tcptrace-idcache-{}", std::process::id()));
    let _ = fs::remove_dir(&dir);
    fs::create_dir(&dir).expect("a cgroup (as root)");
    for name in ["a", "b", "c"] {
        fs::create_dir(dir.join(name)).expect("a cgroup");
    }
    let ino = |name: &str| fs::metadata(dir.join(name)).expect("meta").ino();
    let mut ids = IdentityResolver::new(IdentitySources {
        cgroup_root: dir.clone(),
        pod_logs: dir.join("none"),
        container_logs: dir.join("none"),
    });
    ids.limit = 4;
    ids.walk();
    assert_eq!(ids.cache().cached, 4, "the root and a, b, c");
    let (a, b) = (ino("a"), ino("b"));
    fs::remove_dir(dir.join("a")).expect("rmdir a");
    ids.walk();
    fs::remove_dir(dir.join("b")).expect("rmdir b");
    fs::create_dir(dir.join("d")).expect("mkdir d");
    ids.walk();
    let cache = ids.cache();
    assert_eq!((cache.cached, cache.forgotten), (4, 1), "{cache:?}");
    assert!(!ids.known.contains_key(&a), "a, gone first, is forgotten");
    assert!(
        ids.known.contains_key(&b),
        "b, gone since, is kept: {cache:?}"
    );
    assert!(ids.known.contains_key(&ino("d")));
    for name in ["e", "f", "g"] {
        fs::create_dir(dir.join(name)).expect("mkdir");
    }
    ids.walk();
    let cache = ids.cache();
    assert_eq!(cache.cached, 4, "{cache:?}");
    assert!(cache.not_cached >= 2, "every one held is live: {cache:?}");
    for name in ["c", "d", "e", "f", "g", ""] {
        let _ = fs::remove_dir(dir.join(name));
    }
}
