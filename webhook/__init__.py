"""pullsecret-injector: inject imagePullSecrets at admission time and keep the Secrets they name in sync."""
