"""Small building blocks shared by the methods: networks, PPO over trials, trial inputs."""
