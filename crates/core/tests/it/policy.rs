//! The default command policy against the spellings people (and templates)
//! really produce: every dangerous line here must be caught with the right
//! rule and action, and every ordinary operations line must pass untouched.
//! The false-positive list is as important as the catch list: a screen that
//! cries wolf gets disabled.

use opsconductor_core::model::Target;
use opsconductor_core::policy::{Policy, PolicyAction, PolicyConfig, Subject};

fn target(tags: &[&str]) -> Target {
    Target {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Target::local()
    }
}

fn screen_on(policy: &Policy, text: &str, t: &Target) -> Vec<(String, PolicyAction)> {
    let s = Subject {
        job: "j",
        step: 0,
        kind: "exec",
        interpreter: None,
        target: Some(t),
        env: &[],
    };
    policy
        .screen(&s, text)
        .into_iter()
        .map(|h| (h.rule, h.action))
        .collect()
}

/// `(rule, command)`: each must be caught by that rule.
fn dangerous() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    let rm = "recursive-delete-root";
    for line in [
        "rm -rf /",
        "rm -fr /",
        "rm -Rf /",
        "rm -fR /",
        "rm -r -f /",
        "rm -f -r /",
        "rm -r /",
        "rm -R /",
        "rm --recursive --force /",
        "rm --force --recursive /",
        "rm --recursive /",
        "rm --recur -f /",
        "rm -rf --no-preserve-root /",
        "rm --no-preserve-root -rf /",
        "rm -rf / --no-preserve-root",
        "rm / -rf",
        "rm -rf -- /",
        "rm -rfv /",
        "rm -vrf /",
        "rm -rfi /",
        "rm -rf //",
        "rm -rf /.",
        "rm -rf /./",
        "rm -rf /usr/..",
        "rm -rf /tmp/../",
        "rm -rf /*",
        "rm -rf /**",
        "rm -rf /*/",
        "rm -rf '/'",
        "rm -rf \"/\"",
        "rm -rf \"/\"*",
        "rm -rf '/*'",
        "rm -rf /\\*",
        "'rm' -rf /",
        "\"rm\" -rf /",
        "r''m -rf /",
        "r\"m\" -rf /",
        "\\rm -rf /",
        "/bin/rm -rf /",
        "/usr/bin/rm -rf /",
        "sudo rm -rf /",
        "sudo -u root rm -rf /",
        "sudo -E -n rm -rf /",
        "sudo -- rm -rf /",
        "doas rm -rf /",
        "env rm -rf /",
        "env -i PATH=/bin rm -rf /",
        "LANG=C rm -rf /",
        "nice -n 19 rm -rf /",
        "nohup rm -rf / &",
        "timeout 10 rm -rf /",
        "command rm -rf /",
        "exec rm -rf /",
        "busybox rm -rf /",
        "sudo /bin/rm -rf --no-preserve-root /",
        "time rm -rf /",
        "cd /tmp && rm -rf /",
        "true; rm -rf /",
        "false || rm -rf /",
        "echo hi | rm -rf /",
        "if true; then rm -rf /; fi",
        "for i in 1; do rm -rf /; done",
        "( rm -rf / )",
        "{ rm -rf /; }",
        "X=/; rm -rf $X",
        "X=/; rm -rf \"$X\"",
        "X=/; rm -rf ${X}",
        "export D=/; rm -rf $D",
        "rm -rf $UNSET_DIR/",
        "rm -rf \"$UNSET_DIR\"/*",
        "rm -rf ${UNSET_DIR}/*",
        "rm -rf ${UNSET_DIR:-/}",
        "sh -c 'rm -rf /'",
        "bash -c \"rm -rf /\"",
        "bash -lc 'sudo rm -rf /'",
        "su -c 'rm -rf /'",
        "eval rm -rf /",
        "eval 'rm -rf /'",
        "echo $(rm -rf /)",
        "echo `rm -rf /`",
        "x=$(sudo rm -rf /*)",
        "find / -delete",
        "find / -type f -delete",
        "find / -exec rm -rf {} \\;",
        "sudo find / -mindepth 1 -delete",
        "rm -rf $'/'",
        "rm -rf /\\\n",
    ] {
        v.push((rm, line.to_string()));
    }
    for line in [
        "mkfs /dev/sda1",
        "mkfs.ext4 /dev/sdb",
        "mkfs.xfs -f /dev/nvme0n1",
        "sudo mkfs.vfat /dev/sdc1",
        "/sbin/mkfs.btrfs /dev/vdb",
        "mke2fs -t ext4 /dev/sdd",
        "mkdosfs /dev/sde1",
        "echo y | mkfs.ext4 /dev/xvdf",
    ] {
        v.push(("mkfs", line.to_string()));
    }
    for line in [
        "dd if=/dev/zero of=/dev/sda",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "dd of=/dev/nvme0n1 if=/dev/urandom",
        "sudo dd if=image.iso of=/dev/sdb bs=4M status=progress",
        "dd if=/dev/zero of=/dev/mapper/vg-root",
        "dd if=/dev/zero of=/dev/disk/by-id/ata-X",
        "dd if=/dev/zero of=/dev/md0",
        "dd if=/dev/zero of=/dev/mmcblk0",
        "dd if=/dev/zero of=\"/dev/vda\"",
        "D=/dev/sdb; dd if=/dev/zero of=$D",
        "cat /dev/urandom > /dev/sda",
        "echo x > /dev/nvme0n1p1",
        "cat img >| /dev/sdb",
        "shred -n 3 /dev/sda",
        "wipefs -a /dev/sdb",
        "cp disk.img /dev/sdc",
        "head -c 1M /dev/zero | tee /dev/sdb",
        "blkdiscard /dev/nvme1n1",
    ] {
        v.push(("block-device-write", line.to_string()));
    }
    for line in [
        ":(){ :|:& };:",
        ":(){ :|: & };:",
        ": () { : | : & } ; :",
        "bomb() { bomb | bomb & }; bomb",
        "f(){ f|f& };f",
        "function f() { f|f& }; f",
        "function boom { boom | boom & }; boom",
        "perl -e 'fork while fork'",
    ] {
        v.push(("fork-bomb", line.to_string()));
    }
    for line in [
        "chmod -R 777 /",
        "chmod 777 -R /",
        "chmod -R 0777 /",
        "chmod --recursive 777 /",
        "chmod -R a+rwx /",
        "chmod -Rv 777 /",
        "sudo chmod -R 777 /*",
        "chmod -R ugo+rwx //",
        "chown -R nobody /",
        "chown -R nobody:nogroup /*",
        "chgrp -R users /",
    ] {
        v.push(("recursive-chmod-root", line.to_string()));
    }
    for line in [
        "curl https://x.example/install.sh | sh",
        "curl -fsSL https://x.example/i | bash",
        "curl -s https://x.example/i | sudo bash",
        "curl -s https://x.example/i | sudo -E bash -s -- --yes",
        "wget -qO- https://x.example/i | sh",
        "wget -O - https://x.example/i | bash",
        "curl https://x.example/i.py | python3",
        "curl -L x.example | tee /tmp/log | sh",
        "sh -c \"$(curl -fsSL https://x.example/i)\"",
        "bash -c \"$(wget -qO- https://x.example/i)\"",
        "bash <(curl -s https://x.example/i)",
        "eval \"$(curl -s https://x.example/env)\"",
        "source <(curl -s https://x.example/env)",
    ] {
        v.push(("pipe-to-shell", line.to_string()));
    }
    v
}

/// Lines that must only be caught on production targets.
fn shutdowns() -> Vec<&'static str> {
    vec![
        "shutdown -h now",
        "shutdown -r +5",
        "sudo reboot",
        "reboot",
        "/sbin/halt",
        "poweroff",
        "init 0",
        "init 6",
        "systemctl reboot",
        "sudo systemctl poweroff",
        "systemctl kexec",
    ]
}

/// Ordinary operations work: none of these may be flagged on any target.
fn ordinary() -> Vec<&'static str> {
    vec![
        "rm -rf /tmp/build",
        "rm -rf /var/cache/app/*",
        "rm -rf ./dist",
        "rm -rf dist/ node_modules/",
        "rm -f /etc/nginx/sites-enabled/default",
        "rm -rf \"${BUILD_DIR:?}\"/*",
        "rm -rf \"${BUILD_DIR:?}/\"",
        "rm -rf \"$HOME/.cache/pip\"",
        "rm -rf $TMPDIR/work",
        "rm -rf /opt/app/releases/$(date +%s)",
        "rm -r /srv/www/old",
        "rm /tmp/lockfile",
        "rm -- -weird-file",
        "find /var/log -name '*.gz' -mtime +30 -delete",
        "find /tmp -type f -mtime +7 -exec rm -f {} \\;",
        "find / -name core -print",
        "find / -xdev -perm -4000 -type f",
        "ls -la /",
        "du -sh /*",
        "df -h /",
        "echo 'rm -rf /' > /tmp/dont-run.txt",
        "grep -r 'rm -rf /' /etc",
        "echo \"never type rm -rf / by mistake\"",
        "printf '%s\\n' 'mkfs is dangerous'",
        "git rm -r --cached .",
        "docker rm -f web",
        "docker system prune -af",
        "kubectl delete pod web-1",
        "kubectl rollout restart deployment/web",
        "helm upgrade --install web ./chart",
        "terraform plan -out plan.bin",
        "ansible-playbook site.yml --check",
        "dd if=/dev/zero of=/tmp/swapfile bs=1M count=1024",
        "dd if=/dev/sda of=/backup/sda.img bs=4M",
        "dd if=/dev/urandom of=/dev/null count=10",
        "dd if=disk.img of=out.img conv=notrunc",
        "echo test > /dev/null",
        "cat /proc/cpuinfo > /dev/stderr",
        "echo 1 > /proc/sys/vm/drop_caches",
        "lsblk /dev/sda",
        "fdisk -l /dev/sda",
        "blkid /dev/sda1",
        "mount /dev/sdb1 /mnt",
        "smartctl -a /dev/nvme0",
        "mkswap /swapfile",
        "mkdir -p /srv/app/releases",
        "chmod 755 /usr/local/bin/tool",
        "chmod -R 755 /srv/www",
        "chmod -R g+w /var/lib/app",
        "chown -R www-data:www-data /var/www/html",
        "chmod 777 /tmp/shared",
        "chmod -R 777 /tmp/scratch",
        "chmod +x ./deploy.sh",
        "curl -fsSL https://x.example/health",
        "curl -o /tmp/app.tgz https://x.example/app.tgz",
        "curl -s https://x.example/api | jq .status",
        "wget -q https://x.example/app.tgz -O /tmp/app.tgz",
        "curl -s https://x.example/list | grep sh",
        "curl https://x.example | tee out.html",
        "sh ./install.sh",
        "bash -c 'echo hello'",
        "sh -c 'cd /srv && ls'",
        "python3 manage.py migrate",
        "systemctl restart nginx",
        "systemctl status sshd",
        "systemctl daemon-reload",
        "systemctl enable --now app.service",
        "service postgresql reload",
        "journalctl -u app --since today",
        "uptime",
        "last reboot",
        "who -b",
        "echo reboot required",
        "cat /var/run/reboot-required",
        "apt-get update && apt-get install -y nginx",
        "yum -y update",
        "dnf install -y htop",
        "pip install -r requirements.txt",
        "tar -xzf /tmp/app.tgz -C /opt/app",
        "rsync -a --delete ./build/ /srv/www/",
        "cp -r /etc/nginx /backup/nginx",
        "mv /tmp/app.new /opt/app",
        "ln -sfn /opt/app/releases/42 /opt/app/current",
        "tail -n 100 /var/log/syslog",
        "ps aux | grep nginx",
        "kill -HUP $(cat /run/nginx.pid)",
        "pkill -f gunicorn",
        "useradd -m deploy",
        "passwd -l olduser",
        "crontab -l",
        "iptables -L -n",
        "ss -tlnp",
        "free -m",
        "top -bn1 | head -20",
        "openssl x509 -in cert.pem -noout -dates",
        "certbot renew --quiet",
        "nginx -t && systemctl reload nginx",
        "pg_dump app > /backup/app.sql",
        "psql -c 'select 1'",
        "redis-cli ping",
        "echo $PATH",
        "export RELEASE=42 && ./deploy.sh",
        "for f in /etc/*.conf; do echo $f; done",
        "while read l; do echo $l; done < /etc/hosts",
        "sudo -u postgres psql -c 'vacuum'",
        "sudo systemctl restart app",
        "date; hostname; id",
        "test -f /etc/os-release && cat /etc/os-release",
        "X=/srv/app; rm -rf $X/tmp",
        "D=/var/tmp/job; rm -rf \"$D\"",
        "rm -rf ${WORK:-/tmp/work}",
        "f() { echo hi; }; f",
        "function greet { echo hi; }; greet",
        "echo ':(){ :|:& };: is a fork bomb' > /dev/null",
        "zfs snapshot pool/data@now",
        "lvcreate -L 10G -n data vg0",
        "fsck -n /dev/sda1",
        "shred -u /tmp/secret.txt",
        "wipefs /dev/sdb",
    ]
}

#[test]
fn at_least_100_dangerous_spellings_are_caught_with_the_right_rule() {
    let p = Policy::default();
    let list = dangerous();
    assert!(list.len() >= 100, "only {} spellings", list.len());
    let any = target(&[]);
    let mut missed = Vec::new();
    for (rule, line) in &list {
        let hits = screen_on(&p, line, &any);
        if !hits.iter().any(|(r, _)| r == rule) {
            missed.push(format!("{rule}: {line:?} → {hits:?}"));
        }
    }
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
}

#[test]
fn deny_and_require_approval_actions_are_as_documented() {
    let p = Policy::default();
    let any = target(&[]);
    for (rule, line) in dangerous() {
        let want = if rule == "pipe-to-shell" {
            PolicyAction::RequireApproval
        } else {
            PolicyAction::Deny
        };
        let hits = screen_on(&p, &line, &any);
        assert!(hits.iter().any(|(r, a)| r == rule && *a == want), "{line}");
    }
}

#[test]
fn shutdown_needs_approval_only_on_production_targets() {
    let p = Policy::default();
    let prod = target(&["web", "production"]);
    let staging = target(&["web", "staging"]);
    for line in shutdowns() {
        assert_eq!(
            screen_on(&p, line, &prod),
            [(
                "shutdown-production".to_string(),
                PolicyAction::RequireApproval
            )],
            "{line}"
        );
        assert!(screen_on(&p, line, &staging).is_empty(), "{line}");
    }
}

#[test]
fn at_least_100_ordinary_commands_are_not_flagged() {
    let p = Policy::default();
    let list = ordinary();
    assert!(list.len() >= 100, "only {} commands", list.len());
    let prod = target(&["production"]);
    let flagged: Vec<String> = list
        .iter()
        .filter_map(|line| {
            let hits = screen_on(&p, line, &prod);
            (!hits.is_empty()).then(|| format!("{line:?} → {hits:?}"))
        })
        .collect();
    assert!(
        flagged.is_empty(),
        "false positives:\n{}",
        flagged.join("\n")
    );
}

#[test]
fn script_bodies_are_screened_line_by_line_and_other_languages_only_by_regex() {
    let p = Policy::default();
    let t = target(&[]);
    let body = "set -eu\nDIR=/\ncd /tmp\n# cleanup\nrm -rf \"$DIR\"\n";
    let s = Subject {
        job: "j",
        step: 2,
        kind: "script",
        interpreter: Some("/bin/bash -e"),
        target: Some(&t),
        env: &[],
    };
    let hits = p.screen(&s, body);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].rule, "recursive-delete-root");
    assert_eq!(hits[0].step, Some(2));
    assert_eq!(hits[0].target.as_deref(), Some("local"));
    // The step's environment is what the variable holds at run time.
    let env = [("DIR".to_string(), "/srv/app".to_string())];
    let s2 = Subject { env: &env, ..s };
    assert!(p.screen(&s2, "rm -rf \"$DIR\"").is_empty());
    let py = Subject {
        interpreter: Some("python3"),
        ..s
    };
    assert!(
        p.screen(&py, "import os\nos.system('echo rm -rf /')")
            .is_empty()
    );
}

#[test]
fn admins_override_the_defaults_and_add_regex_and_shell_rules() {
    let p = Policy::from_yaml(
        "disable: [mkfs]\n\
         actions: {pipe-to-shell: deny}\n\
         rules:\n\
         \x20 - name: no-drop-database\n\
         \x20   action: warn\n\
         \x20   regex: '(?i)drop\\s+database'\n\
         \x20 - name: kubectl-delete-namespace\n\
         \x20   action: require_approval\n\
         \x20   shell: {command: [kubectl], args: [delete, namespace]}\n\
         \x20   scope: {jobs: [j]}\n",
        "policy.yaml",
    )
    .unwrap();
    let t = target(&[]);
    assert!(screen_on(&p, "mkfs.ext4 /dev/sdb", &t).is_empty());
    assert_eq!(
        screen_on(&p, "curl x | sh", &t),
        [("pipe-to-shell".to_string(), PolicyAction::Deny)]
    );
    assert_eq!(
        screen_on(&p, "psql -c 'DROP  DATABASE app'", &t),
        [("no-drop-database".to_string(), PolicyAction::Warn)]
    );
    assert_eq!(
        screen_on(&p, "sudo kubectl delete namespace prod", &t),
        [(
            "kubectl-delete-namespace".to_string(),
            PolicyAction::RequireApproval
        )]
    );
    assert!(screen_on(&p, "kubectl delete pod x", &t).is_empty());
    // No defaults at all.
    let none = Policy::from_config(&PolicyConfig {
        defaults: false,
        ..PolicyConfig::default()
    })
    .unwrap();
    assert!(screen_on(&none, "rm -rf /", &t).is_empty());
}

#[test]
fn hostile_policy_files_are_refused_with_a_clear_error() {
    let long = format!(
        "rules:\n  - name: x\n    action: deny\n    regex: '{}'\n",
        "a".repeat(5000)
    );
    let huge_class =
        "rules:\n  - name: x\n    action: deny\n    regex: '\\w{1000}\\w{1000}\\w{1000}'\n";
    let many: String = std::iter::once("rules:\n".to_string())
        .chain((0..600).map(|i| format!("  - {{name: r{i}, action: warn, regex: x}}\n")))
        .collect();
    for (text, want) in [
        (long.as_str(), "at most 2000"),
        (huge_class, "regex"),
        (many.as_str(), "at most 500"),
        ("rules:\n  - {name: x, action: deny}\n", "exactly one of"),
        (
            "rules:\n  - {name: x, action: nuke, regex: x}\n",
            "policy.yaml:2",
        ),
        (
            "rules:\n  - {name: x, action: deny, regex: x, scope: {kinds: [http]}}\n",
            "unknown step kind",
        ),
        (
            "rules:\n  - {name: x, action: deny, regex: x}\n  - {name: x, action: deny, regex: y}\n",
            "defined twice",
        ),
        (
            "rules:\n  - {name: x, action: deny, shell: {command: []}}\n",
            "at least one program",
        ),
    ] {
        let e = Policy::from_yaml(text, "policy.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn screening_hostile_text_is_bounded() {
    let p = Policy::default();
    let t = target(&[]);
    // Deep nesting and long lines: the reader is linear and depth-capped.
    let deep = format!("{}rm -rf /{}", "$(".repeat(5000), ")".repeat(5000));
    let _ = screen_on(&p, &deep, &t);
    let quotes = "'\"".repeat(100_000);
    assert!(screen_on(&p, &quotes, &t).is_empty());
    let nested_sh = format!("{}rm -rf /{}", "sh -c '".repeat(50), "'".repeat(50));
    let _ = screen_on(&p, &nested_sh, &t);
    let wide = "rm -rf /tmp/x; ".repeat(50_000);
    assert!(screen_on(&p, &wide, &t).is_empty());
}
