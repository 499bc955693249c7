fn main() {
    std::process::exit(lossc::cli::main());
}
