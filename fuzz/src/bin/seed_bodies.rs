//! AFL entry point of [`inference_server_fuzz::seed_bodies`].

fn main() {
    afl::fuzz!(|data: &[u8]| inference_server_fuzz::seed_bodies(data));
}
