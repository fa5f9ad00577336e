<?php
// Application settings.

return [
    'name' => 'laravel corpus',
    'env' => getenv('PLATFORM_ENVIRONMENT_TYPE') ?: 'local',
    'greeting' => 'Hello from the laravel corpus',
];
