//! Whatever a guest prints, reading its console never panics.

use proptest::prelude::*;

proptest! {
    /// Arbitrary text as a Linux console, as the meminit guest's JSON line, as a
    /// marker line and as a failed guest's console: figures or nothing, never a
    /// panic.
    #[test]
    fn arbitrary_consoles_never_panic(
        text in prop_oneof!["(?s).{0,200}", "\\[ *[0-9.]{0,12}\\] [A-Za-z :=-]{0,60}[0-9.]{0,12}( MHz| MB)?"],
        json in "[{}\\[\\]\",:0-9a-z -]{0,120}",
    ) {
        for t in [&text, &json] {
            let _ = meminit_vm::parse_linux_console(t);
            let _ = meminit_vm::guest_json(&format!("MEMINIT-JSON {t}"));
            let _ = meminit_vm::marks::mark_in(t);
            prop_assert!(!meminit_vm::failure_reason(t).is_empty());
        }
    }
}
