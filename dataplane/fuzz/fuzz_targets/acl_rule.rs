//! Arbitrary text through the ACL rule parser (`logic::Rule::from_str`, used for config): it
//! must not panic, and a rule it accepts must print back to text that parses to the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linerate_dataplane::logic::Rule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rule) = text.parse::<Rule>() {
        let again: Rule = rule.to_string().parse().expect("a printed rule parses");
        assert_eq!(again, rule);
    }
});
