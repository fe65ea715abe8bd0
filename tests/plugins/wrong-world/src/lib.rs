//! Test plugin `wrong-world`: a valid component that exports `palisade-test:wrong-world/wrong`
//! instead of a Palisade world; loading it must fail with a clear error.

wit_bindgen::generate!({ world: "wrong", path: "wit" });

struct Wrong;

impl Guest for Wrong {
    fn describe() -> String {
        "wrong-world".to_string()
    }

    fn run(input: String) -> String {
        input
    }
}

export!(Wrong);
