<?php
// Under a location with `scripts: false`: neither run nor sent as it is.
$secret = 'never-shown';
