"""AMD specifics of the trust layer: the ARK pins and VEK certificate extensions (`certs`), and
the Key Distribution Service's URLs and answer checks (`kds`)."""
