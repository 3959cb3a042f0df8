fn main() {
    let k = ccl_crypto::SigningKey::generate(ccl_crypto::Curve::P384).unwrap();
    let vk = k.verifying_key();
    let d = ccl_crypto::sha256(b"x");
    let sig = k.sign_prehashed(&d).unwrap();
    let raw = k.sign_raw(b"hello");
    let n = 300;
    let t = std::time::Instant::now();
    for _ in 0..n {
        vk.verify_prehashed(&d, &sig).unwrap();
    }
    println!("p384 prehashed verify: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        vk.verify_raw(b"hello", &raw).unwrap();
    }
    println!("ring raw verify: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        k.sign_prehashed(&d).unwrap();
    }
    println!("p384 sign: {:?}", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        k.sign_raw(b"hello");
    }
    println!("ring sign: {:?}", t.elapsed() / n);
}
