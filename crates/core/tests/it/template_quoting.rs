//! Values stay literal data in every quoting context: hundreds of hostile
//! payloads rendered into real scripts, run by dash, bash and python3 as real
//! processes. Each script prints every value back (separated by U+001E): the
//! output must equal the values byte for byte, and the canary file that every
//! injection attempt tries to create must never exist. Contexts no escape can
//! make safe are refused with a line and column. (PowerShell is not installed
//! here; its rules are unit-tested in `template::tests`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::path::Path;
use std::process::Command;

use opsconductor_core::template::{Quoting, Templates};
use serde_json::json;

const SEP: char = '\u{1e}';

/// At least 200 hostile payloads, each aimed at `canary`.
fn payloads(canary: &Path) -> Vec<String> {
    let c = canary.display();
    let mut atoms: Vec<String> = vec![
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("'; touch {c}; '"),
        format!("\"; touch {c}; \""),
        format!("\\\"; touch {c}; #"),
        format!("'$(touch {c})'"),
        format!("\"$(touch {c})\""),
        format!("${{IFS}}touch${{IFS}}{c}"),
        format!("$'\\x41'; touch {c}"),
        format!("\nEOF\ntouch {c}\ncat <<EOF\n"),
        format!("\nEOF\ntouch {c}\n"),
        format!("\tEOF\ntouch {c}\n"),
        format!("\n\tEOF\ntouch {c}\n"),
        format!("EOF\ntouch {c}"),
        format!("'); open('{c}','w'); ('"),
        format!("\"); open(\"{c}\",\"w\"); (\""),
        format!("'''); open('{c}','w'); ('''"),
        format!("\"\"\"); open('{c}','w'); (\"\"\""),
        format!("{{open('{c}','w')}}"),
        format!("{{__import__('os').system('touch {c}')}}"),
        format!("\\'); open('{c}','w'); #"),
        format!("\\\"); open('{c}','w'); #"),
        format!("\n__import__('os').system('touch {c}')\n"),
        format!("\r__import__('os').system('touch {c}')\r"),
        format!("$(New-Item {c})"),
        format!("\"; touch {c}; echo \"$(touch {c})"),
        format!("\\$(touch {c})"),
        format!("\\`touch {c}\\`"),
        format!("$( touch {c} )"),
        format!("<(touch {c})"),
        format!("{{{{ touch {c} }}}}"),
        format!("'\"'\"'; touch {c}; '"),
        format!("a;touch {c}&"),
        format!("|touch {c}"),
        format!("&& touch {c}"),
        format!("\n`touch {c}`\n"),
        format!("\"\"\"\n__import__('os').system('touch {c}')\n\"\"\""),
        format!("'''\n__import__('os').system('touch {c}')\n'''"),
        "EOF".into(),
        "'@\n".into(),
        "\"@\n".into(),
        "\n'@\n".into(),
        "!".into(),
        "!!".into(),
        "!$".into(),
        "!-1".into(),
        "*".into(),
        "?".into(),
        "[a-z]*".into(),
        "/*".into(),
        "~".into(),
        "~root".into(),
        "%s%n%x%d".into(),
        "%%".into(),
        "%(x)s".into(),
        "{".into(),
        "}".into(),
        "{{".into(),
        "}}".into(),
        "{}".into(),
        "{0}".into(),
        "{x!r}".into(),
        "'".into(),
        "\"".into(),
        "'''".into(),
        "\"\"\"".into(),
        "\\".into(),
        "\\\\".into(),
        "\\'".into(),
        "\\\"".into(),
        "a\\".into(),
        "\\n".into(),
        "\\x41\\u0041\\N{BULLET}".into(),
        "\n".into(),
        "\n\n".into(),
        "\r\n".into(),
        "\r".into(),
        "\t".into(),
        String::new(),
        " ".into(),
        "  lead and trail  ".into(),
        "\u{1}\u{2}\u{7}\u{8}\u{1b}[31m\u{7f}".into(),
        "\u{c}\u{b}".into(),
        "é ü 中文 🦀".into(),
        "\u{202e}rtl".into(),
        "\u{2028}\u{2029}\u{85}".into(),
        "‘’‚‛“”„".into(),
        "\u{feff}bom".into(),
        "a=b".into(),
        "-rf".into(),
        "--".into(),
        ";".into(),
        "&&".into(),
        "|".into(),
        ">".into(),
        "<".into(),
        "<<".into(),
        "#".into(),
        "# c".into(),
        "#>".into(),
        "<#".into(),
        "$".into(),
        "$$".into(),
        "${x}".into(),
        "$HOME".into(),
        "$((1+1))".into(),
        "$[1]".into(),
        "`".into(),
        "${OC+}".into(),
        "$true".into(),
        "@(1)".into(),
        "$env:PATH".into(),
        "(".into(),
        ")".into(),
        "))".into(),
        "esac".into(),
        "case x in x) ;; esac".into(),
        "-- -- --".into(),
        "\\\n".into(),
        "a\\\nb".into(),
    ];
    let base = atoms.len();
    // Pairs and wraps, deterministically, until well over 200.
    let mut i = 0;
    while atoms.len() < 260 {
        let a = atoms[i % base].clone();
        let b = atoms[(i * 7 + 3) % base].clone();
        atoms.push(match i % 4 {
            0 => format!("{a}{b}"),
            1 => format!("x{a}\n{b}y"),
            2 => format!("{b}'{a}\""),
            _ => format!("\\{a}\\{b}\\"),
        });
        i += 1;
    }
    atoms.sort();
    atoms.dedup();
    for a in &atoms {
        assert!(!a.contains(SEP) && !a.contains('\0'));
    }
    assert!(atoms.len() >= 200, "{}", atoms.len());
    atoms
}

struct Case {
    name: &'static str,
    quoting: Quoting,
    preamble: &'static str,
    /// `P` is replaced by the placeholder.
    line: &'static str,
    /// What one value prints (`V` is the value).
    expect: &'static str,
}

fn run(interp: &str, script: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join("script");
    std::fs::write(&file, script).unwrap();
    let out = Command::new(interp)
        .arg(&file)
        .env("PYTHONIOENCODING", "utf-8")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {interp} (it must be installed): {e}"));
    assert!(
        out.status.success(),
        "{interp} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script.chars().take(3000).collect::<String>()
    );
    out.stdout
}

/// Renders one script with every payload in `case`'s context, runs it with
/// each interpreter, and checks the round trip and the canary.
fn round_trip(case: &Case, interps: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    let all = payloads(&canary);
    let t = Templates::new();
    // Values some contexts cannot hold (a quoted heredoc's terminator line)
    // are refused at render, one by one; the rest go into one script.
    let mut kept = Vec::new();
    let mut refused = 0;
    for p in &all {
        let src = format!(
            "{}{}",
            case.preamble,
            case.line.replace('P', "{{ params.v }}")
        );
        match t.render(&src, case.quoting, &json!({"params": {"v": p}})) {
            Ok(_) => kept.push(p.clone()),
            Err(e) => {
                assert!(e.contains("would end"), "{}: {e}", case.name);
                refused += 1;
            }
        }
    }
    let mut src = case.preamble.to_string();
    let mut expect = String::new();
    for (i, v) in kept.iter().enumerate() {
        src.push_str(&case.line.replace('P', &format!("{{{{ params.p[{i}] }}}}")));
        expect.push_str(&case.expect.replace('V', v));
        expect.push(SEP);
    }
    let script = t
        .render(&src, case.quoting, &json!({"params": {"p": kept}}))
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    t.check_for(&src, case.quoting)
        .unwrap_or_else(|e| panic!("{}: apply check: {e}", case.name));
    for interp in interps {
        let out = run(interp, &script, dir.path());
        assert!(
            !canary.exists(),
            "{} under {interp}: canary created",
            case.name
        );
        if out != expect.as_bytes() {
            let got = String::from_utf8_lossy(&out);
            let g: Vec<&str> = got.split(SEP).collect();
            let e: Vec<&str> = expect.split(SEP).collect();
            for (k, (a, b)) in g.iter().zip(&e).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "{} under {interp}: value {k} ({:?})",
                    case.name,
                    kept.get(k)
                );
            }
            panic!("{} under {interp}: output differs", case.name);
        }
    }
    println!(
        "{}: {} payloads round-trip under {interps:?}, {refused} refused",
        case.name,
        kept.len()
    );
    assert!(kept.len() >= 200, "{}: only {} kept", case.name, kept.len());
}

const SHELLS: &[&str] = &["dash", "bash"];

#[test]
fn shell_unquoted() {
    round_trip(
        &Case {
            name: "sh unquoted",
            quoting: Quoting::Shell,
            preamble: "",
            line: "printf '%s' P; printf '\\036'\n",
            expect: "V",
        },
        SHELLS,
    );
}

#[test]
fn shell_double_quotes() {
    round_trip(
        &Case {
            name: "sh \"...\"",
            quoting: Quoting::Shell,
            preamble: "",
            line: "printf '%s' \"a P b\"; printf '\\036'\n",
            expect: "a V b",
        },
        SHELLS,
    );
}

#[test]
fn shell_single_quotes() {
    round_trip(
        &Case {
            name: "sh '...'",
            quoting: Quoting::Shell,
            preamble: "",
            line: "printf '%s' 'a P b'; printf '\\036'\n",
            expect: "a V b",
        },
        SHELLS,
    );
}

#[test]
fn shell_unquoted_heredoc() {
    round_trip(
        &Case {
            name: "sh <<EOF",
            quoting: Quoting::Shell,
            preamble: "",
            line: "cat <<EOF\na P b\nEOF\nprintf '\\036'\n",
            expect: "a V b\n",
        },
        SHELLS,
    );
    round_trip(
        &Case {
            name: "sh <<-EOF",
            quoting: Quoting::Shell,
            preamble: "",
            line: "cat <<-EOF\n\tP\n\tEOF\nprintf '\\036'\n",
            expect: "V\n",
        },
        SHELLS,
    );
}

#[test]
fn shell_quoted_heredoc_keeps_values_or_refuses_terminators() {
    round_trip(
        &Case {
            name: "sh <<'EOF'",
            quoting: Quoting::Shell,
            preamble: "",
            line: "cat <<'EOF'\na P b\nEOF\nprintf '\\036'\n",
            expect: "a V b\n",
        },
        SHELLS,
    );
    round_trip(
        &Case {
            name: "sh <<\"EOF\" at line start",
            quoting: Quoting::Shell,
            preamble: "",
            line: "cat <<\"EOF\"\nP\nEOF\nprintf '\\036'\n",
            expect: "V\n",
        },
        SHELLS,
    );
}

#[test]
fn shell_command_substitution() {
    round_trip(
        &Case {
            name: "sh \"$(... \"...\")\"",
            quoting: Quoting::Shell,
            preamble: "",
            line: "x=\"$(printf '%s.' \"P\")\"; printf '%s' \"${x%.}\"; printf '\\036'\n",
            expect: "V",
        },
        SHELLS,
    );
    round_trip(
        &Case {
            name: "sh $(... unquoted)",
            quoting: Quoting::Shell,
            preamble: "",
            line: "x=$(printf '%s.' P); printf '%s' \"${x%.}\"; printf '\\036'\n",
            expect: "V",
        },
        SHELLS,
    );
}

#[test]
fn shell_comment() {
    round_trip(
        &Case {
            name: "sh # comment",
            quoting: Quoting::Shell,
            preamble: "",
            line: "# note: P\nprintf 'ok\\036'\n",
            expect: "ok",
        },
        SHELLS,
    );
}

const PY: &str = "import sys\n\
def w(s): sys.stdout.buffer.write(s.encode('utf-8') + b'\\x1e')\n\
def wb(b): sys.stdout.buffer.write(b + b'\\x1e')\n";

#[test]
fn python_code() {
    round_trip(
        &Case {
            name: "python code",
            quoting: Quoting::Python,
            preamble: PY,
            line: "w(P)\n",
            expect: "V",
        },
        &["python3"],
    );
    round_trip(
        &Case {
            name: "python # comment",
            quoting: Quoting::Python,
            preamble: PY,
            line: "# P\nw('ok')\n",
            expect: "ok",
        },
        &["python3"],
    );
}

#[test]
fn python_strings() {
    for (name, line) in [
        ("python '...'", "w('a P b')\n"),
        ("python \"...\"", "w(\"a P b\")\n"),
        ("python '''...'''", "w('''a P b''')\n"),
        ("python \"\"\"...\"\"\"", "w(\"\"\"a P b\"\"\")\n"),
        ("python f'...'", "w(f'a P b')\n"),
        ("python f\"...\"", "w(f\"a P b\")\n"),
        ("python f'''...'''", "w(f'''a P b''')\n"),
        ("python u'...'", "w(u'a P b')\n"),
    ] {
        round_trip(
            &Case {
                name,
                quoting: Quoting::Python,
                preamble: PY,
                line,
                expect: "a V b",
            },
            &["python3"],
        );
    }
}

#[test]
fn python_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let all = payloads(&dir.path().join("canary"));
    let t = Templates::new();
    let mut src = PY.to_string();
    for i in 0..all.len() {
        src.push_str(&format!("wb(b'a{{{{ params.p[{i}] }}}}b')\n"));
    }
    let script = t
        .render(&src, Quoting::Python, &json!({"params": {"p": all}}))
        .unwrap();
    let out = run("python3", &script, dir.path());
    let expect: String = all.iter().map(|v| format!("a{v}b{SEP}")).collect();
    assert_eq!(String::from_utf8_lossy(&out), expect);
    assert!(!dir.path().join("canary").exists());
}

/// Contexts without a sound escape are refused at apply (line and column of
/// the template) and at render.
#[test]
fn unescapable_contexts_are_refused_with_line_and_column() {
    let t = Templates::new();
    let ctx = json!({"params": {"x": "$(touch /tmp/x)", "n": 5}});
    for (q, src, why) in [
        (
            Quoting::Shell,
            "echo ok\necho `echo {{ params.x }}`",
            "`...`",
        ),
        (Quoting::Shell, "echo \"${X:-{{ params.x }}}\"", "${...}"),
        (
            Quoting::Shell,
            "echo $(( {{ params.x }} + 1 ))",
            "arithmetic",
        ),
        (Quoting::Shell, "echo $'{{ params.x }}'", "$'...'"),
        (Quoting::Shell, "echo \\{{ params.x }}", "backslash"),
        (Quoting::Shell, "echo ${{ params.x }}", "right after $"),
        (Quoting::Shell, "cat <<{{ params.x }}\nx\n", "delimiter"),
        (
            Quoting::Shell,
            "cat <<E\n$(echo {{ params.x }})\nE\n",
            "here-document",
        ),
        (Quoting::Python, "x = r'{{ params.x }}'", "raw string"),
        (Quoting::Python, "x = f'{ {{ params.x }} }'", "f-string"),
        (Quoting::Python, "x = f{{ params.x }}", "after a name"),
        (Quoting::Python, "x = '\\{{ params.x }}'", "backslash"),
        (
            Quoting::PowerShell,
            "Write-Output \"${ {{ params.x }} }\"",
            "${...}",
        ),
        (
            Quoting::PowerShell,
            "Write-Output `{{ params.x }}",
            "backtick",
        ),
    ] {
        // Where the `{{` is in the source.
        let off = src.find("{{ params").unwrap();
        let line = src[..off].matches('\n').count() + 1;
        let col = src[..off].rsplit('\n').next().unwrap().chars().count() + 1;
        let e = t.check_for(src, q).unwrap_err();
        assert!(
            e.contains(&format!("line {line}, column {col}:")) && e.contains(why),
            "{src:?}: {e}"
        );
        let e = t.render(src, q, &ctx).unwrap_err();
        assert!(e.contains(why), "{src:?}: {e}");
    }
    // Numbers are fine in arithmetic.
    assert_eq!(
        t.render("echo $(( {{ params.n }} + 1 ))", Quoting::Shell, &ctx)
            .unwrap(),
        "echo $(( 5 + 1 ))"
    );
}

/// Only `| raw` turns quoting off: `| safe` is refused at apply and at
/// render, and neither `{% autoescape false %}` nor `| tojson` / `| e` /
/// captured blocks leave a value unquoted.
#[test]
fn only_raw_turns_quoting_off() {
    let t = Templates::new();
    let ctx = json!({"params": {"x": "$(touch /tmp/pwned)"}});
    let e = t.check("echo {{ params.x | safe }}").unwrap_err();
    assert!(
        e.contains("line 1, column 18") && e.contains("| raw"),
        "{e}"
    );
    assert!(
        t.check("{% filter safe %}{{ params.x }}{% endfilter %}")
            .is_err()
    );
    assert!(
        t.render("echo {{ params.x|safe }}", Quoting::Shell, &ctx)
            .unwrap_err()
            .contains("| safe")
    );
    for src in [
        "echo {{ params.x | tojson }}",
        "echo {{ params.x | e }}",
        "{% autoescape false %}echo {{ params.x }}{% endautoescape %}",
        "{% set y %}{{ params.x }}{% endset %}echo {{ y }}",
        "{% set f %}%s{% endset %}echo {{ f | format(params.x) }}",
        "{% set s %}A{% endset %}echo {{ s | replace('A', params.x) }}",
        "{% macro m(v) %}{{ v }}{% endmacro %}echo {{ m(params.x) }}",
    ] {
        let out = t.render(src, Quoting::Shell, &ctx).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let res = run(
            "dash",
            &out.replace("/tmp/pwned", &dir.path().join("c").display().to_string()),
            dir.path(),
        );
        assert!(!dir.path().join("c").exists(), "{src}: {out}");
        assert!(
            String::from_utf8_lossy(&res).contains("touch"),
            "{src}: {out}"
        );
    }
    assert_eq!(
        t.render("echo {{ params.x | raw }}", Quoting::Shell, &ctx)
            .unwrap(),
        "echo $(touch /tmp/pwned)"
    );
}

/// Template bombs end with a clear error quickly: a work budget (fuel) and
/// an output limit.
#[test]
fn template_bombs_are_bounded() {
    let t = Templates::new();
    let ctx = json!({});
    let start = std::time::Instant::now();
    let e = t
        .render(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            Quoting::Shell,
            &ctx,
        )
        .unwrap_err();
    assert!(e.contains("steps of work"), "{e}");
    let e = t
        .render("{{ 'x' * 50000000 }}", Quoting::Shell, &ctx)
        .unwrap_err();
    assert!(e.contains("larger than"), "{e}");
    let e = t
        .render(
            "{% for i in range(3000) %}{{ 'y' * 5000 }}{% endfor %}",
            Quoting::None,
            &ctx,
        )
        .unwrap_err();
    assert!(e.contains("larger than"), "{e}");
    let e = t
        .render("{% for i in range(90000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}", Quoting::Shell, &ctx)
        .unwrap_err();
    assert!(e.contains("larger than"), "{e}");
    println!("4 bombs refused in {:?}", start.elapsed());
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
