"""What a UNet is and how the WebUI calls it: model families, shape profiles, a job's call shapes, and the
random-weight UNets tests and benchmarks use."""
