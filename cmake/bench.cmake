# benchmark smoke tests are registered here (bench/)
