//! Generates the protobuf messages and ttrpc stubs from protos/agent.proto.

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=protos/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .inputs(["protos/agent.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate the agent protocol");

    // The generated files start with inner attributes, which `include!` does
    // not accept; lib.rs sets the equivalent allows on the enclosing modules.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = std::path::Path::new(&out_dir).join(name);
        let text = std::fs::read_to_string(&path).expect("read generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated code");
    }
}
