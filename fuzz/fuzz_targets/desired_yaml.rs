//! The desired-state YAML reader on its own (fast, so it reaches deeper than the whole loader):
//! the bounded event scan and the tree builder must agree, and stay within their limits.
#![no_main]

use converge::desired::yaml::{parse, scan, Budget, LimitKind, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let mut budget = Budget::default();
    let scanned = scan(src, Limits::DESIRED, &mut budget);
    assert!(budget.copied_bytes <= Limits::DESIRED.max_copied_bytes + src.len());
    for s in &scanned.secrets {
        assert!(
            s.range.start <= s.range.end && s.range.end <= src.len(),
            "{s:?}"
        );
        assert!(src.is_char_boundary(s.range.start) && src.is_char_boundary(s.range.end));
    }
    match parse(src) {
        Ok(docs) => {
            // What the builder accepted, the scan accepted too (the loader relies on the scan).
            assert!(scanned.error.is_none(), "{:?}", scanned.error);
            for d in &docs {
                let _ = d.span("/a/0/b");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.pos.offset <= src.len(), "{e:?}");
                assert!(e.pos.line >= 1 || src.is_empty(), "{e:?}");
            }
            // A limit the builder hit, the scan hit at the same place.
            if let Some(limit) = errors.iter().find(|e| e.limit.is_some()) {
                let s = scanned.error.as_ref().expect("the scan saw the limit too");
                assert_eq!(s.pos, limit.pos);
                assert_eq!(s.limit, limit.limit);
                assert!(matches!(
                    s.limit,
                    Some(LimitKind::Depth | LimitKind::Expansion)
                ));
            }
        }
    }
});
