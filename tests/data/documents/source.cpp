int main() {
  return 0;  // µs
}
