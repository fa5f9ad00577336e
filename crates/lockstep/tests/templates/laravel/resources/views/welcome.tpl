<h1>{{ $greeting }}</h1>
<p>first user: {{ $user }}</p>
